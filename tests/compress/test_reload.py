"""Every compressed model that `archbench compress` saves loads again from its run folder:
widths and removed layers (structure), wrapped blocks and masks (the method's replay)."""

from __future__ import annotations

import json

import pytest
from test_compress_cli import DATA, _compress, _run

from archbench.data import load_dataset
from archbench.runs import load_trained
from archbench.train import evaluate

CASES = [
    ("vit_pico", "structured", ["ratio=0.5"]),
    ("vit_pico", "evit", ["keep_rate=0.5"]),
    ("vit_pico", "sit", ["keep_rate=0.5"]),
    ("vit_pico", "optin", ["mac_constraint=0.5", "calibration_images=16"]),
    ("resnet_pico", "dress", ["epochs=1"]),
    ("resnet_pico", "n2n", ["remove_episodes=2", "shrink_episodes=1", "student_epochs=1"]),
]


@pytest.mark.parametrize("model, method, args", CASES, ids=[c[1] for c in CASES])
def test_the_saved_compressed_model_reloads(tmp_path, capsys, model, method, args):
    run = _run(tmp_path, model, **({"depth": 4} if model == "vit_pico" else {}))
    rec = _compress(run, tmp_path / "out", method, *args)
    capsys.readouterr()
    assert rec["saved"] and rec["reloads"], rec["reload_error"]
    reloaded, info = load_trained(tmp_path / "out")
    # "before" is the original model, counted here independently of the command
    from archbench.bench.measure import count_flops
    from archbench.models import create_model

    kw = json.loads((run / "model.json").read_text())["kwargs"]
    original = create_model(model, **kw)
    assert rec["before"]["macs"] == count_flops(original, 16)["macs"]
    assert rec["before"]["params"] == sum(p.numel() for p in original.parameters())
    if method in ("evit", "sit", "optin", "structured", "n2n"):
        assert rec["after"]["macs"] < rec["before"]["macs"]
    # the rebuilt model is the measured one: same size, same accuracy on the same split
    assert sum(p.numel() for p in reloaded.parameters()) == rec["after"]["params"]
    data = load_dataset(DATA, seed=0)
    assert evaluate(reloaded, data, split="test")["top1"] == pytest.approx(rec["after"]["top1"])
    # `archbench eval` rebuilds it the same way
    from archbench.cli import main

    assert main(["eval", str(tmp_path / "out"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(rec["after"]["top1"])
    saved = json.loads((tmp_path / "out" / "model.json").read_text())
    assert ("replay" in saved) == (method in ("evit", "sit", "optin", "dress"))
    if method == "n2n" and not all(rec["info"]["keep"]):
        assert saved["structure"]["identity"]  # removed blocks are rebuilt as identities


def test_a_model_that_does_not_reload_is_reported(tmp_path, monkeypatch):
    from archbench.compress import registry

    run = _run(tmp_path, "vit_pico", depth=4)
    monkeypatch.setitem(registry._REPLAYS, "sit", lambda model, info: None)  # a broken replay
    rec = _compress(run, tmp_path / "out", "sit", "keep_rate=0.5")
    assert rec["saved"] and not rec["reloads"]
    assert "does not match" in rec["reload_error"]


def test_removed_layers_are_recorded_and_rebuilt():
    import copy

    import torch
    import torch.nn as nn

    from archbench.compress.structured import apply_structure, snapshot, structure_of
    from archbench.models import create_model

    torch.manual_seed(0)
    original = create_model("resnet_pico", num_classes=4, img_size=16)
    ref = snapshot(original)
    student = copy.deepcopy(original)
    student.layer1[0] = nn.Identity()  # a removed residual block, as N2N removes them
    structure = structure_of(student, ref, original)
    assert structure["identity"] == ["layer1.0"]
    fresh = apply_structure(create_model("resnet_pico", num_classes=4, img_size=16), structure)
    fresh.load_state_dict(student.state_dict())  # strict: same tensors, same names
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(fresh.eval()(x), student.eval()(x))


def test_fine_tuning_keeps_unstructured_zeros(tmp_path):
    from archbench.runs import load_trained as load

    run = _run(tmp_path, "resnet_pico")
    rec = _compress(run, tmp_path / "out", "rd_prune", "sparsity=0.7", finetune=1)
    assert rec["finetune"]["status"] == "completed" and rec["reloads"]
    model, _ = load(tmp_path / "out")
    w = [m.weight for m in model.modules() if hasattr(m, "weight") and m.weight is not None]
    weights = [t for t in w if t.ndim > 1]
    zeros = sum(int((t == 0).sum()) for t in weights) / sum(t.numel() for t in weights)
    assert zeros >= 0.69  # the pruned weights stayed at zero through fine-tuning
