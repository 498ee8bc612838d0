"""Training process for the kill-and-resume test: ``python _resume_worker.py OUT SLEEP``.

Trains resnet_pico on a tiny shapes set with a checkpoint after every step; SLEEP seconds
per step give the test time to kill it mid-run. Also used in-process by the test. The
task is stateful (a memory bank of features indexed by sample, a step counter and a
trainable auxiliary head), so that resuming must restore task state too.
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from archbench.data import load_dataset
from archbench.models import create_model
from archbench.train import ClassificationTask, Recipe, fit, register_task


@register_task("test_memory_bank")
class MemoryBankTask(ClassificationTask):
    """Classification plus a loss pulling each sample's features towards its stored ones."""

    def __init__(self, weight: float = 0.5, momentum: float = 0.5):
        super().__init__()
        self.weight, self.momentum = weight, momentum
        self.bank = torch.zeros(0)
        self.steps = torch.zeros((), dtype=torch.int64)

    def setup(self, model, data, recipe):
        self.bank = torch.zeros(len(data.train), model.num_features)
        self.trainable["aux_head"] = nn.Linear(model.num_features, data.num_classes)

    def step(self, batch, state):
        out = super().step(batch, state)
        model = state.model
        feats = model.forward_head(model.forward_features(batch.images), pre_logits=True)
        stored = self.bank[batch.index]
        pull = F.mse_loss(feats, stored)
        aux = F.cross_entropy(self.trainable["aux_head"](feats), batch.labels)
        with torch.no_grad():
            self.bank[batch.index] = self.momentum * stored + (1 - self.momentum) * feats
        self.steps += 1
        out["pull"], out["aux_head"] = pull.detach(), aux.detach()
        out["loss"] = out["loss"] + self.weight * (pull + aux)
        return out

    def state_dict(self):
        return {**super().state_dict(), "bank": self.bank, "steps": self.steps}

    def load_state_dict(self, sd):
        super().load_state_dict(sd)
        self.bank.copy_(sd["bank"])
        self.steps.copy_(sd["steps"])


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
    task="test_memory_bank",
    task_args={"weight": 0.5},
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
