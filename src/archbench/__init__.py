"""archbench: a PyTorch lab for vision architectures."""

from .models import create_model, get_model_card, list_models
from .optimize import optimize

__version__ = "0.1.0"
__all__ = ["__version__", "create_model", "get_model_card", "list_models", "optimize"]
