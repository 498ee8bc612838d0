import json

import pytest
import torch

from archbench.models import create_model
from archbench.train import save_checkpoint

TINY_DATA = "shapes:n_train=16,n_val=8,n_test=8,img_size=16,num_classes=4"


@pytest.fixture(scope="session")
def tiny_data() -> str:
    """A dataset spec small enough to load in milliseconds."""
    return TINY_DATA


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A run folder as `archbench train` leaves it for `tiny_data`, written directly
    (model.json and a resnet_pico checkpoint; nothing is trained)."""
    run = tmp_path_factory.mktemp("run")
    kwargs = {"num_classes": 4, "in_chans": 3, "img_size": 16}
    torch.manual_seed(0)
    save_checkpoint(
        run / "checkpoints" / "best.safetensors",
        create_model("resnet_pico", **kwargs),
        meta={"epoch": 1},
    )
    info = {"model": "resnet_pico", "kwargs": kwargs, "data": TINY_DATA, "data_seed": 0}
    (run / "model.json").write_text(json.dumps(info))
    return run
