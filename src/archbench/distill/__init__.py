"""Knowledge distillation: every method is a registered training task, one module each.

Any trained registered model is a teacher (:func:`load_teacher`), any registered model a
student; intermediate features come from ``forward_intermediates``. Importing this
package imports every module in it, which registers the tasks
(``archbench.train.create_task`` does it on first use).
"""

from __future__ import annotations

import importlib
import pkgutil

from .logit import LogitDistillation, kd_loss
from .teacher import DistillationTask, TeacherInput, load_teacher

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["DistillationTask", "LogitDistillation", "TeacherInput", "kd_loss", "load_teacher"]
