"""Small helpers shared by layers and models."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = [
    "add_residual_",
    "cpuinfo_field",
    "init_kaiming_conv",
    "init_trunc_normal",
    "init_trunc_normal_linear",
    "make_divisible",
    "to_2tuple",
]


def add_residual_(y: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """``y + shortcut``, written into ``y``: for a residual block's last temporary (the
    output of its final norm, attention or drop path), which nothing else reads. Saves one
    allocation per block, as timm's ``x += shortcut`` does; the add's backward needs
    neither operand, and autograd raises if ``y`` was saved for a backward after all.
    Out of place when ``y`` is the shortcut itself or lacks the sum's shape or dtype
    (under autocast a bf16 ``y`` plus a float32 shortcut is a float32 sum)."""
    if (
        y is shortcut
        or y.shape != torch.broadcast_shapes(y.shape, shortcut.shape)
        or y.dtype != torch.result_type(y, shortcut)
    ):
        return y + shortcut
    return y.add_(shortcut)


def to_2tuple(x: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(x, (tuple, list)):
        if len(x) != 2:
            raise ValueError(f"expected an int or a pair, got {x!r}")
        return int(x[0]), int(x[1])
    return int(x), int(x)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never dropping below 90% of it."""
    min_value = min_value or divisor
    out = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if out < 0.9 * value:
        out += divisor
    return out


def init_trunc_normal_linear(m: nn.Module) -> None:
    """Transformer-style init for ``module.apply``: Linear weights ~ N(0, 0.02) truncated, biases 0."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def init_trunc_normal(m: nn.Module) -> None:
    """The same truncated-normal init for Linear and Conv2d weights (ConvNeXt-style nets)."""
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def init_kaiming_conv(m: nn.Module) -> None:
    """ResNet-style init for ``module.apply``: He-normal (fan-out) Conv2d weights.

    Skipped on the ``meta`` device, where there is nothing to initialise.
    """
    if isinstance(m, nn.Conv2d) and m.weight.device.type != "meta" and m.weight.numel() > 0:
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def cpuinfo_field(key: str, path: str = "/proc/cpuinfo") -> str:
    """The first ``key : value`` line's value in Linux's CPU description (``"vendor_id"``,
    ``"model name"``), or ``""`` where the file or the key is missing."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                name, sep, value = line.partition(":")
                if sep and name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return ""
