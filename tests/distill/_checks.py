"""What the distillation tests share: the task, the recipe, the student builder, the loss on
validation before training and the stop-then-resume check.

The test files import it as ``from _checks import ...``: pytest puts this folder on
``sys.path`` (it has no ``__init__.py``), in each xdist worker too.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file

from archbench.models import create_model
from archbench.train import Recipe, create_task, fit
from archbench.train.callbacks import TrainState
from archbench.train.engine import validate

# the teachers' task (conftest.py trains them on it) and most students'
SPEC = "shapes:n_train=64,n_val=32,n_test=16,img_size=16,num_classes=4"
RECIPE = Recipe(epochs=2, batch_size=16, lr=3e-3, warmup_epochs=0.0, seed=1)


def make_student(name: str, **kwargs):
    """``name`` for SPEC (4 classes, 16x16), seeded: every call builds the same weights."""
    torch.manual_seed(1)
    return create_model(name, num_classes=4, img_size=16, **kwargs)


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class FixedOutputs(nn.Module):
    """Stands for a teacher group: fixed logits, whatever the images."""

    def __init__(self, outs):
        super().__init__()
        self.outs = outs

    def forward(self, images):
        return [o.clone() for o in self.outs]


def validate_before_training(task_name, args, model, data, recipe=RECIPE, **state):
    """Task ``task_name`` set up on the untrained ``model``, and its validation metrics (the
    distillation terms among them) before any step; ``state`` sets TrainState fields."""
    task = create_task(task_name, args)
    task.setup(model, data, recipe)
    st = TrainState(model=model, optimizer=None, recipe=recipe, data=data, out_dir=".", **state)
    return task, validate(task, model, data.val, recipe, st)


def assert_resumes_bit_exact(build_student, data, recipe, full_dir, cut_dir, stop_step=5):
    """A run of ``recipe`` stopped after step ``stop_step`` in ``cut_dir``, then resumed there,
    ends with the very checkpoint of the uninterrupted run already in ``full_dir``: the same
    keys and every tensor equal. Returns both checkpoints (full, resumed) for further checks."""

    class StopAt:
        def on_step_end(self, state):
            state.stop = state.step == stop_step

    first = fit(build_student(), data, recipe, cut_dir, callbacks=[StopAt()], progress=False)
    assert first.status == "stopped" and first.steps == stop_step
    fit(build_student(), data, recipe, cut_dir, progress=False)
    a = load_file(full_dir / "checkpoints" / "last.safetensors")
    b = load_file(cut_dir / "checkpoints" / "last.safetensors")
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    return a, b
