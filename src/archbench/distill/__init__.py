"""Knowledge distillation: every method is a registered training task.

Any trained registered model is a teacher (:func:`load_teacher`), any registered model a
student; intermediate features come from ``forward_intermediates``. Importing this
package registers the tasks (``archbench.train.create_task`` does it on first use).
"""

from __future__ import annotations

from .deit import DeiTDistillation
from .logit import LogitDistillation, kd_loss
from .teacher import DistillationTask, TeacherInput, load_teacher

__all__ = [
    "DeiTDistillation",
    "DistillationTask",
    "LogitDistillation",
    "TeacherInput",
    "kd_loss",
    "load_teacher",
]
