"""Training process for the kill-and-resume test: ``python _resume_worker.py OUT SLEEP``.

Trains resnet_pico on a tiny shapes set with a checkpoint after every step; SLEEP seconds
per step give the test time to kill it mid-run. Also used in-process by the test.
"""

from __future__ import annotations

import sys
import time

import torch

from archbench.data import load_dataset
from archbench.models import create_model
from archbench.train import Recipe, fit

SPEC = "shapes:n_train=96,n_val=16,n_test=16,img_size=16,num_classes=4"
RECIPE = Recipe(
    epochs=2,
    batch_size=16,
    lr=3e-3,
    ema=True,
    ema_decay=0.9,
    mixup_alpha=0.4,
    cutmix_alpha=1.0,
    cutout=4,
    crop="rrc",
    drop_path_rate=0.1,
    checkpoint_every_steps=1,
    seed=3,
)


class Sleep:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_step_end(self, state) -> None:
        time.sleep(self.seconds)


def run(out: str, sleep: float = 0.0):
    torch.set_num_threads(1)
    data = load_dataset(SPEC, seed=0)
    torch.manual_seed(RECIPE.seed)
    model = create_model(
        "resnet_pico", num_classes=4, in_chans=3, img_size=16, drop_path_rate=RECIPE.drop_path_rate
    )
    res = fit(model, data, RECIPE, out, callbacks=[Sleep(sleep)] if sleep else (), progress=False)
    return model, res


if __name__ == "__main__":
    run(sys.argv[1], float(sys.argv[2]))
