"""ONNX and torch.export: exported outputs match PyTorch; failures name the reason; files
appear only after the check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import archbench.export as export_mod
from archbench.cli import main
from archbench.export import ExportError, export_model
from archbench.models import create_model
from archbench.train import save_checkpoint

ort = pytest.importorskip("onnxruntime")

# one CPU variant of each kind, at 32x32
ONE_OF_EACH_KIND = [
    "resnet_pico",  # CNN
    "vit_pico",  # ViT
    "mixer_pico",  # MLP-Mixer
    "poolformerv2_pico",  # MetaFormer
    "mambaout_pico",  # gated CNN (MambaOut)
    "kat_pico",  # KAN (GR-KAN channel mixers)
]


def _reference(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(x).numpy()


@pytest.mark.parametrize("name", ONE_OF_EACH_KIND)
def test_exported_outputs_match_pytorch(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, img_size=32)
    x = torch.randn(2, 3, 32, 32)
    fresh = torch.randn(5, 3, 32, 32)  # another batch size than the one exported
    want = _reference(model, fresh)

    summary = export_model(model, x, "onnx", tmp_path / "m.onnx", atol=1e-4, rtol=1e-4)
    assert summary["max_abs_error"] <= 1e-4
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: fresh.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)

    export_model(model, x, "torch-export", tmp_path / "m.pt2")
    program = torch.export.load(str(tmp_path / "m.pt2"))
    with torch.no_grad():
        got = program.module()(fresh).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.pt2"]  # no temp left


class BranchOnData(nn.Module):
    """Data-dependent control flow: the sign of the mean picks the branch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            return x.flatten(1)
        return -x.flatten(1)


@pytest.mark.parametrize("fmt", ["onnx", "torch-export"])
def test_data_dependent_control_flow_fails_with_the_reason(fmt, tmp_path):
    out = tmp_path / "m.bin"
    with pytest.raises(ExportError, match="data-dependent control flow"):
        export_model(BranchOnData(), torch.randn(2, 3, 4, 4), fmt, out)
    assert list(tmp_path.iterdir()) == []


class CountsCalls(nn.Module):
    """Python state the export freezes: each call scales by how often it was called."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x.flatten(1) * self.calls


@pytest.mark.parametrize("fmt", ["onnx", "torch-export"])
def test_export_that_differs_is_refused_and_not_written(fmt, tmp_path):
    out = tmp_path / "m.bin"
    with pytest.raises(ExportError, match=r"differ from PyTorch.*atol=0.001"):
        export_model(CountsCalls(), torch.randn(2, 3, 4, 4), fmt, out, atol=1e-3, rtol=0)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_fail_early(tmp_path):
    model = nn.Flatten()
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match="unknown export format 'tflite'.*onnx, torch-export"):
        export_model(model, x, "tflite", tmp_path / "m")
    with pytest.raises(ValueError, match=r"B x C x H x W.*\(3, 4, 4\)"):
        export_model(model, x[0], "onnx", tmp_path / "m")
    with pytest.raises(ValueError, match="NaN"):
        export_model(model, torch.full_like(x, float("nan")), "onnx", tmp_path / "m")
    with pytest.raises(ValueError, match="atol must be a finite number >= 0"):
        export_model(model, x, "onnx", tmp_path / "m", atol=-1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_model(model, x, "onnx", tmp_path / "missing" / "m")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        export_model(lambda t: t, x, "onnx", tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def resnet_run(tmp_path):
    run = tmp_path / "run"
    kwargs = {"num_classes": 4, "in_chans": 3, "img_size": 16}
    torch.manual_seed(0)
    model = create_model("resnet_pico", **kwargs)
    save_checkpoint(run / "checkpoints" / "best.safetensors", model, meta={"epoch": 1})
    (run / "model.json").write_text(json.dumps({"model": "resnet_pico", "kwargs": kwargs}))
    return run, model.eval()


def test_command_writes_the_file_only_after_the_check(resnet_run, tmp_path, monkeypatch, capsys):
    run, model = resnet_run
    out = tmp_path / "exported" / "resnet.onnx"
    out.parent.mkdir()
    seen: list[tuple[bool, list[str]]] = []
    compare = export_mod._compare

    def watching(*args, **kwargs):
        seen.append((out.exists(), sorted(p.name for p in out.parent.iterdir())))
        return compare(*args, **kwargs)

    monkeypatch.setattr(export_mod, "_compare", watching)
    assert main(["export", str(run), "--format", "onnx", "--out", str(out), "--json"]) == 0
    assert len(seen) == 2  # the example batch and a batch of another size
    for existed, names in seen:
        assert not existed  # checked before the file has its name
        assert len(names) == 1 and names[0].startswith(".resnet.onnx.")  # the temporary file
    assert [p.name for p in out.parent.iterdir()] == ["resnet.onnx"]
    summary = json.loads(capsys.readouterr().out)
    assert summary["input_shape"] == [2, 3, 16, 16] and summary["model"] == "resnet_pico"

    # the file holds the run's trained weights: same logits as the checkpoint's model
    x = torch.randn(3, 3, 16, 16)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, _reference(model, x), atol=1e-4, rtol=1e-4)


def test_command_failing_check_leaves_nothing(resnet_run, tmp_path, monkeypatch, capsys):
    run, _ = resnet_run
    out = tmp_path / "exported" / "resnet.pt2"
    out.parent.mkdir()

    def mismatch(got, want, atol, rtol, what):
        raise ExportError(f"the exported model's outputs differ from PyTorch's on {what}")

    monkeypatch.setattr(export_mod, "_compare", mismatch)
    monkeypatch.delenv("ARCHBENCH_DEBUG", raising=False)
    rc = main(["export", str(run), "--format", "torch-export", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("archbench export: error: the exported model's")
    assert list(Path(out.parent).iterdir()) == []
