"""Self-supervised pretraining: every method is a registered training task, one module each.

A method is a label-free :class:`archbench.train.Task` (``uses_labels = False``): it makes
its own views from ``batch.raw`` with the batched augmentations of :mod:`.augment` and puts
its heads (projectors, prototypes, predictors) in ``self.trainable``. Any registered backbone
is the encoder; :mod:`.probe` evaluates its frozen features with a linear and a k-NN probe
whose hyper-parameters are chosen on a validation split carved from the training data.
Importing this package imports every module in it, which registers the tasks
(``archbench.train.create_task`` does it on first use).
"""

from __future__ import annotations

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
