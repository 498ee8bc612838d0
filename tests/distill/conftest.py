"""Trained teachers shared by the distillation tests (trained once per test session), and
the SPEC data most students train on."""

from __future__ import annotations

import pytest

# the shared checks assert in a helper module: have pytest explain their failures as in a test
pytest.register_assert_rewrite("_checks")

from _checks import SPEC  # noqa: E402

from archbench.cli import main  # noqa: E402
from archbench.data import load_dataset  # noqa: E402


def _train(tmp_path_factory, model: str, epochs: int = 3):
    out = tmp_path_factory.mktemp(f"teacher_{model}") / "run"
    argv = ["train", model, "--data", SPEC, "--epochs", str(epochs), "--batch-size", "16"]
    assert main([*argv, "--lr", "0.005", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def teacher_run(tmp_path_factory):
    """A CNN teacher: resnet_pico trained briefly on SPEC (4 classes, 16x16)."""
    return _train(tmp_path_factory, "resnet_pico")


@pytest.fixture(scope="session")
def vit_teacher_run(tmp_path_factory):
    """A ViT teacher: vit_pico trained briefly on SPEC."""
    return _train(tmp_path_factory, "vit_pico")


@pytest.fixture(scope="module")
def data():
    """SPEC, loaded once per test module (a module with other data defines its own)."""
    return load_dataset(SPEC, seed=0)
