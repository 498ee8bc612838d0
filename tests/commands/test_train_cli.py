from __future__ import annotations

import json

from archbench.cli import main

DATA = "shapes:n_train=48,n_val=16,n_test=16,img_size=16,num_classes=4"


def test_train_then_eval_then_data(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "resnet_pico",
            "--data",
            DATA,
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--seed",
            "2",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["status"] == "completed" and res["epochs_completed"] == 1
    info = json.loads((out / "model.json").read_text())
    assert info["model"] == "resnet_pico" and info["kwargs"]["num_classes"] == 4
    assert info["data_seed"] == 2

    assert main(["eval", str(out), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["split"] == "test" and ev["n"] == 16 and 0 <= ev["top1"] <= 1 and ev["epoch"] == 1
    assert main(["eval", str(out / "checkpoints" / "last.safetensors"), "--split", "val"]) == 0
    assert "top-1" in capsys.readouterr().out

    assert main(["data", DATA, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["num_classes"] == 4 and d["n_train"] == 48 and len(d["mean"]) == 3


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    assert (
        main(["train", "resnet_pico", "--data", DATA, "--recipe", "nope", "--out", str(tmp_path)])
        == 2
    )
    assert "shipped recipes" in capsys.readouterr().err
    assert (
        main(["train", "resnet_pico", "--data", DATA, "--set", "warmup=3", "--out", str(tmp_path)])
        == 2
    )
    assert "unknown recipe key" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["data", "folder:/no/such/dir"]) == 2
    assert "does not exist" in capsys.readouterr().err
