"""`archbench compress` end to end, one method at a time, on a tiny run folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from archbench.cli import main
from archbench.compress import (
    check_compressor,
    compressor_arguments,
    create_compressor,
    list_compressors,
)
from archbench.compress.quantune import QuantConfig, apply_config, quantune_search
from archbench.models import create_model
from archbench.runs import load_trained
from archbench.train import save_checkpoint

DATA = "shapes:n_train=64,n_val=32,n_test=32,img_size=16,num_classes=4"


def _run(tmp_path, model: str, **kwargs):
    run = tmp_path / model
    kw = {"num_classes": 4, "in_chans": 3, "img_size": 16, **kwargs}
    torch.manual_seed(0)
    save_checkpoint(run / "checkpoints" / "best.safetensors", create_model(model, **kw))
    (run / "model.json").write_text(
        json.dumps({"model": model, "kwargs": kw, "data": DATA, "data_seed": 0})
    )
    return run


def _compress(run, out, method, *args, finetune=0):
    argv = ["compress", str(run), "--method", method, "--out", str(out), "--repeats", "2"]
    argv += ["--finetune-epochs", str(finetune)]
    argv += ["--batch", "8", "--threads", "1", "--throughput-seconds", "0.1", "--json"]
    if args:
        argv += ["--arg", *args]
    assert main(argv) == 0
    return json.loads((out / "compress.json").read_text())


def test_registry_lists_the_methods_and_their_arguments():
    assert {"structured", "pt2e_int8", "adalog", "quantune"} <= set(list_compressors())
    assert compressor_arguments("structured")["ratio"] == 0.3
    with pytest.raises(ValueError, match=r"unknown compression method 'structurd'.*structured"):
        create_compressor("structurd")
    with pytest.raises(ValueError, match=r"no argument\(s\) nosuch; accepted: ratio"):
        create_compressor("structured", {"nosuch": 1})
    # argument values are checked by the method's check, before any model exists
    with pytest.raises(ValueError, match=r"ratio must lie in \(0, 1\)"):
        check_compressor("structured", {"ratio": 1.5})
    with pytest.raises(ValueError, match=r"bits must be an integer in 2..8"):
        check_compressor("adalog", {"bits": 9})


def test_structured_end_to_end_and_the_result_reloads(tmp_path):
    run = _run(tmp_path, "resnet_pico")
    rec = _compress(run, tmp_path / "out", "structured", "ratio=0.5", finetune=1)
    b, a = rec["before"], rec["after"]
    assert a["params"] < b["params"] / 2 and a["macs"] < b["macs"] / 2
    assert a["file_bytes"] < b["file_bytes"] / 2
    assert rec["speedup"]["macs_speedup"] > 2 and "latency_speedup" in rec["speedup"]
    assert not rec["simulated"] and rec["needs_finetune"]
    assert rec["finetune"]["status"] == "completed" and rec["finetune"]["best_epoch"] == 1
    assert (tmp_path / "out" / "finetune" / "checkpoints" / "best.safetensors").is_file()
    model, info = load_trained(tmp_path / "out")  # rebuilt from model.json's structure
    assert info["structure"]["shapes"]
    assert sum(p.numel() for p in model.parameters()) == a["params"]
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 4)


def test_adalog_end_to_end_is_marked_simulated(tmp_path):
    run = _run(tmp_path, "vit_pico", depth=1)
    rec = _compress(run, tmp_path / "out", "adalog", "bits=4", "calib_batches=1")
    assert rec["simulated"] and not rec["int8"]
    assert set(rec["info"]["layers"]) == {"blocks.0.attn:softmax", "blocks.0.mlp:gelu"}
    assert 0 <= rec["after"]["top1"] <= 1


def test_quantune_chooses_by_the_tree_model_and_the_best_measured(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet_pico", num_classes=4, img_size=16).eval()
    cal = [torch.randn(8, 3, 16, 16) for _ in range(4)]

    # a synthetic accuracy that only the configuration determines: the tree model must find
    # the peak (per-channel, affine, clip 0.999) in few trials
    def fake_accuracy(m):
        c = next(x.config for x in m.modules() if hasattr(x, "config"))
        return (
            (c.granularity == "channel")
            + (c.scheme == "affine")
            + (c.clip == 0.999) * 0.5
            + (c.calibration == 4) * 0.25
        )

    best, history = quantune_search(model, cal, fake_accuracy, trials=8, initial=3, seed=3)
    assert best == QuantConfig(4, 0.999, "affine", "channel")  # the one peak of 24
    assert [h["chosen_by"] for h in history] == ["random"] * 3 + ["xgboost"] * 5
    assert max(h["accuracy"] for h in history) == 2.75
    # int8 fake quantization by hand: per-tensor symmetric weights round to multiples of
    # max|w| / 127
    q = apply_config(model, QuantConfig(1, 1.0, "symmetric", "tensor"), cal)
    w = model.head.weight.detach()
    step = w.abs().max() / 127
    assert torch.allclose(q.head.qweight, (w / step).round() * step)
    assert np.isfinite(q(cal[0]).detach().numpy()).all()


def test_quantune_end_to_end(tmp_path):
    rec = _compress(
        _run(tmp_path, "resnet_pico"), tmp_path / "out", "quantune", "trials=2", "initial=1"
    )
    assert rec["simulated"] and len(rec["info"]["trials"]) == 2
    assert rec["after"]["macs"] == rec["before"]["macs"]
