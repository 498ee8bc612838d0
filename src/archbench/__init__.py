"""archbench: a PyTorch lab for vision architectures."""

from .allocator import retain_freed_memory
from .models import create_model, get_model_card, list_models
from .optimize import optimize

__version__ = "0.1.0"
__all__ = [
    "__version__",
    "create_model",
    "get_model_card",
    "list_models",
    "optimize",
    "retain_freed_memory",
]
