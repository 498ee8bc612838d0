"""Quantune: choose a post-training quantization configuration with gradient-boosted trees.

Lee et al., *Quantune: Post-training Quantization of Convolutional Neural Networks using
Extreme Gradient Boosting for Fast Deployment* (2022). The configuration of PTQ (calibration
size, activation clipping, scheme, weight granularity) changes a model's accuracy, and
the best combination differs per model. Rather than trying every combination, Quantune
measures a few, fits an XGBoost regressor from a configuration's features to its measured
accuracy, measures next the configuration the model predicts best among those not yet
tried, refits, and stops after a trial budget; the best measured configuration wins.

Here each configuration is applied as simulated 8-bit quantization (weights of every
convolution and linear layer, and their inputs, fake-quantized with the chosen granularity,
scheme and clipping) and its accuracy is measured on the validation split, never the test
split. The search space, the first random trials and the greedy choice by the tree model
follow the paper; the paper's transfer of a tree model across networks (a database of
earlier searches) is left out. The chosen model is simulated (no int8 kernel).
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .registry import CompressContext, CompressResult, register_compressor

__all__ = ["SPACE", "QuantConfig", "apply_config", "quantune_search"]

SPACE = {
    "calibration": (1, 4),  # calibration batches
    "clip": (1.0, 0.999, 0.99),  # activation range: max or a percentile of |x|
    "scheme": ("symmetric", "affine"),  # activations
    "granularity": ("channel", "tensor"),  # weights
}


@dataclass(frozen=True)
class QuantConfig:
    calibration: int
    clip: float
    scheme: str
    granularity: str

    def features(self) -> list[float]:
        """Numeric features for the tree model (one column per choice)."""
        return [
            float(self.calibration),
            float(self.clip),
            float(self.scheme == "affine"),
            float(self.granularity == "channel"),
        ]


def all_configs() -> list[QuantConfig]:
    return [QuantConfig(*combo) for combo in itertools.product(*SPACE.values())]


def _fake_int8(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, signed: bool) -> torch.Tensor:
    if signed:  # symmetric: zero point 0, levels -127..127
        scale = torch.maximum(hi.abs(), lo.abs()).clamp(min=1e-8) / 127
        return (x / scale).round().clamp(-127, 127) * scale
    scale = (hi - lo).clamp(min=1e-8) / 255  # affine: 0..255 with a zero point
    zero = (-lo / scale).round()
    return ((x / scale).round() + zero).clamp(0, 255).sub(zero) * scale


class _FakeQuantInput(nn.Module):
    """Wraps a conv/linear: fake-quantized input (calibrated range) and weight."""

    def __init__(self, layer: nn.Module, config: QuantConfig) -> None:
        super().__init__()
        self.layer = layer
        self.config = config
        w = layer.weight.detach()
        if config.granularity == "channel":
            bound = w.abs().flatten(1).amax(1).view(-1, *([1] * (w.ndim - 1)))
        else:
            bound = w.abs().max()
        self.register_buffer("qweight", _fake_int8(w, -bound, bound, True))
        self.observed: list[torch.Tensor] = []
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None

    def calibrate(self) -> None:
        x = torch.cat([o.flatten() for o in self.observed])
        if x.numel() > 1_000_000:
            x = x[torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]]
        q = self.config.clip
        self.lo = x.min() if q >= 1 else torch.quantile(x, 1 - q)
        self.hi = x.max() if q >= 1 else torch.quantile(x, q)
        self.observed = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lo is None:
            self.observed.append(x.detach())
            return self.layer(x)
        x = _fake_int8(x, self.lo, self.hi, self.config.scheme == "symmetric")
        if isinstance(self.layer, nn.Linear):
            return nn.functional.linear(x, self.qweight, self.layer.bias)
        return self.layer._conv_forward(x, self.qweight, self.layer.bias)


def apply_config(
    model: nn.Module, config: QuantConfig, calibration: list[torch.Tensor]
) -> nn.Module:
    """A copy of ``model`` with every conv/linear fake-quantized under ``config``."""
    model = copy.deepcopy(model).eval()
    wrapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear | nn.Conv1d | nn.Conv2d):
                w = _FakeQuantInput(child, config)
                setattr(parent, name, w)
                wrapped.append(w)
    with torch.no_grad():
        for batch in calibration[: config.calibration]:
            model(batch)
    for w in wrapped:
        w.calibrate()
    return model


def quantune_search(
    model: nn.Module,
    calibration: list[torch.Tensor],
    evaluate_fn,
    trials: int = 8,
    initial: int = 3,
    seed: int = 0,
) -> tuple[QuantConfig, list[dict[str, Any]]]:
    """Quantune's loop: ``initial`` random configurations, then the configuration the
    XGBoost model predicts best among the untried, until ``trials`` are measured.
    ``evaluate_fn(model) -> accuracy``. Returns the best measured and the history."""
    import xgboost as xgb

    space = all_configs()
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(len(space)))
    tried: dict[int, float] = {}
    history = []

    def measure(i: int, how: str) -> None:
        acc = float(evaluate_fn(apply_config(model, space[i], calibration)))
        tried[i] = acc
        history.append({"config": asdict(space[i]), "accuracy": acc, "chosen_by": how})

    for i in order[: min(initial, trials)]:
        measure(int(i), "random")
    while len(tried) < min(trials, len(space)):
        x = np.array([space[i].features() for i in tried])
        y = np.array(list(tried.values()))
        booster = xgb.XGBRegressor(
            n_estimators=50, max_depth=3, learning_rate=0.3, random_state=seed, n_jobs=1
        )
        booster.fit(x, y)
        untried = [i for i in range(len(space)) if i not in tried]
        pred = booster.predict(np.array([space[i].features() for i in untried]))
        measure(untried[int(np.argmax(pred))], "xgboost")
    best = max(tried, key=lambda i: tried[i])
    return space[best], history


def _check_args(trials: int = 8, initial: int = 3, **_: Any) -> None:
    n = len(all_configs())
    if isinstance(trials, bool) or not isinstance(trials, int) or not 1 <= trials <= n:
        raise ValueError(f"trials must be an integer in 1..{n} (the search space), got {trials!r}")
    if isinstance(initial, bool) or not isinstance(initial, int) or not 1 <= initial <= trials:
        raise ValueError(f"initial must be an integer in 1..trials, got {initial!r}")


@register_compressor("quantune", check=_check_args)
def quantune(
    model: nn.Module, ctx: CompressContext, trials: int = 8, initial: int = 3
) -> CompressResult:
    """Quantune: XGBoost-guided choice of the 8-bit PTQ configuration, judged by validation
    accuracy (simulated quantization)."""
    from archbench.train.evaluate import evaluate

    if ctx.data is None:
        raise ValueError("quantune measures validation accuracy; pass --data")
    calibration = [b.to(ctx.device) for b in ctx.calibration_batches(max(SPACE["calibration"]))]
    best, history = quantune_search(
        model,
        calibration,
        lambda m: evaluate(m, ctx.data, split="val", batch_size=256)["top1"],
        trials=trials,
        initial=initial,
    )
    info = {
        "config": asdict(best),
        "trials": history,
        "runs": "simulated (fake-quantized int8 weights and activations, float kernels)",
    }
    ctx.log(f"quantune chose {asdict(best)}")
    return CompressResult(model=apply_config(model, best, calibration), simulated=True, info=info)
