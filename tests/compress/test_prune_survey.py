"""The pruning survey over the CPU variants: recorded outcomes still hold, and the table in
docs/compression.md is the one the recorded data gives.

``python benchmarks/compress.py --survey`` prunes every CPU variant (ratio 0.25, the
model's own input size), retrying with each layer a failure names ignored (at most
three), and writes ``data/prune_survey.json``. Here a sample of families with distinct
outcomes is pruned again and must give the same outcome.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from archbench.compress.structured import survey_model

ROOT = Path(__file__).resolve().parents[2]
RECORDS = json.loads((Path(__file__).parent / "data" / "prune_survey.json").read_text())


def _bench_module():
    spec = importlib.util.spec_from_file_location(
        "bench_compress", ROOT / "benchmarks" / "compress.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", ["resnet_pico", "vit_pico", "mlp_pico", "kan_mlp_pico"])
def test_recorded_outcome_still_holds(name):
    record = survey_model(name)
    expected = RECORDS[name]
    assert record["status"] == expected["status"]
    assert record.get("ignored", []) == expected.get("ignored", [])
    if record["status"] in ("ok", "fixed", "ignore"):
        assert record["params_after"] < record["params_before"]
        assert record["same_shapes"] and record["reloads"]


def test_docs_table_is_generated_from_the_recorded_data():
    table = _bench_module().survey_table(RECORDS)
    docs = (ROOT / "docs" / "compression.md").read_text()
    assert table in docs
    assert len(RECORDS) >= 70  # every CPU variant at the time of the survey
