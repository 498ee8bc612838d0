"""Trained teachers shared by the distillation tests (trained once per test session)."""

from __future__ import annotations

import pytest

from archbench.cli import main

SPEC = "shapes:n_train=64,n_val=32,n_test=16,img_size=16,num_classes=4"


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
