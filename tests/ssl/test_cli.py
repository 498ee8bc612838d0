"""`archbench pretrain` writes a normal run folder whose checkpoint holds the encoder;
`archbench probe` reads it and prints the probes' JSON."""

from __future__ import annotations

import json

import torch

from archbench.cli import main
from archbench.runs import load_trained

TINY = "shapes:n_train=48,n_val=16,n_test=24,img_size=16,num_classes=4"


def test_pretrain_then_probe(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["pretrain", "resnet_pico", "--method", "rotnet", "--data", TINY, "--epochs", "1"]
    assert main([*argv, "--batch-size", "16", "--method-arg", "crop_pad=2", "--out", str(out)]) == 0
    info = json.loads((out / "model.json").read_text())
    assert info["model"] == "resnet_pico"
    model, _ = load_trained(out)
    torch.manual_seed(0)  # the seed `pretrain` built the model with: its initial weights
    from archbench.models import create_model

    init = create_model("resnet_pico", **info["kwargs"])
    stem = next(k for k in init.state_dict() if k.endswith("weight"))
    assert not torch.equal(model.state_dict()[stem], init.state_dict()[stem])  # trained
    capsys.readouterr()
    assert (
        main(
            [
                "probe",
                str(out),
                "--ks",
                "3",
                "--weight-decays",
                "0.01",
                "--out",
                str(tmp_path / "probe.json"),
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((tmp_path / "probe.json").read_text())
    assert printed == saved
    assert printed["method"] == "rotnet" and printed["method_args"] == {"crop_pad": 2}
    assert printed["linear"]["weight_decay"] == 0.01 and printed["knn"]["k"] == 3
    assert printed["n_eval"] == 24 and 0 <= printed["linear"]["acc"] <= 1
