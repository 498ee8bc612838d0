"""NASNet-A: a network stacked from the searched Normal and Reduction cells.

*Learning Transferable Architectures for Scalable Image Recognition* (Zoph et al., CVPR
2018). A cell takes the two previous hidden states ``h_i`` (index 0 below) and
``h_{i-1}`` (index 1), projects them to the cell width, and builds five blocks, each
the sum of two operations on earlier states; some states are concatenated as the cell
output. The cell genotypes are data (:data:`NASNET_A_NORMAL`, :data:`NASNET_A_REDUCTION`),
transcribed from the paper's Figure 4 and the official TF-slim release.

ImageNet models (``stem="imagenet"``) start with a 3x3/2 VALID convolution and two
reduction cells at 1/4 and 1/2 of the width; then ``3 * N`` normal cells with reduction
cells after each third ("N @ penultimate filters", e.g. 4 @ 1056 for NASNet-A Mobile).
``stem="cifar"`` is the paper's CIFAR stem (one 3x3 convolution, no stem cells);
``stem_stride=2`` makes that convolution strided (used by the 32x32 pico variant).

ScheduledDropPath: every operation except the identity is dropped per sample with a
probability ``drop_path_rate * (cell + 1) / num_cells_total * progress``, growing with
the cell's depth and linearly with training progress (the release's
``current_step / num_train_steps``, capped at 1). ``archbench.train.fit`` drives it:
before every step it calls ``set_training_progress(steps done / total steps)``, so the
first step drops nothing and the rate reaches ``drop_path_rate`` (depth-scaled) at the
end of training; a resumed run picks the schedule up at its step. A model built
outside ``fit`` starts at progress 1 (the full, depth-scaled rate); a hand-written loop
calls ``set_drop_path_progress(p)`` (``p`` in [0, 1]) itself.

Deviations: convolutions pad symmetrically (``k // 2``) where TF's SAME padding puts the
extra row at the bottom/right on even inputs (same shapes and parameter count, shifted
alignment); the auxiliary classifier used during the paper's training is not built.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import drop_path
from ._base import FeatureInfo, ImageClassifier
from ._registry import ModelCard, build_model, register_model

__all__ = [
    "NASNET_A_NORMAL",
    "NASNET_A_REDUCTION",
    "Genotype",
    "NASNet",
    "NASNetCell",
    "ScheduledDropPath",
]

# A genotype: five blocks of ((input, op), (input, op)) and the states concatenated as
# the output. States: 0 = h_i (the cell input), 1 = h_{i-1}, 2..6 = the blocks' outputs.
Genotype = tuple[tuple[tuple[tuple[int, str], tuple[int, str]], ...], tuple[int, ...]]

NASNET_A_NORMAL: Genotype = (
    (
        ((0, "sep_conv_5x5"), (1, "sep_conv_3x3")),
        ((1, "sep_conv_5x5"), (1, "sep_conv_3x3")),
        ((0, "avg_pool_3x3"), (1, "identity")),
        ((1, "avg_pool_3x3"), (1, "avg_pool_3x3")),
        ((0, "sep_conv_3x3"), (0, "identity")),
    ),
    (1, 2, 3, 4, 5, 6),
)
NASNET_A_REDUCTION: Genotype = (
    (
        ((0, "sep_conv_5x5"), (1, "sep_conv_7x7")),
        ((0, "max_pool_3x3"), (1, "sep_conv_7x7")),
        ((0, "avg_pool_3x3"), (1, "sep_conv_5x5")),
        ((3, "identity"), (2, "avg_pool_3x3")),
        ((2, "sep_conv_3x3"), (0, "max_pool_3x3")),
    ),
    (3, 4, 5, 6),
)
OPS = ("sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7", "avg_pool_3x3", "max_pool_3x3", "identity")

_BN_EPS = 1e-3


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=_BN_EPS)


class ScheduledDropPath(nn.Module):
    """Per-sample drop of an operation's output with a rate set by training progress."""

    def __init__(self, max_rate: float) -> None:
        super().__init__()
        if not 0.0 <= max_rate < 1.0:
            raise ValueError(f"drop-path rate must be in [0, 1), got {max_rate}")
        self.max_rate = max_rate
        self.progress = 1.0

    @property
    def rate(self) -> float:
        return self.max_rate * self.progress

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.rate, self.training)

    def extra_repr(self) -> str:
        return f"max_rate={self.max_rate:.4f}, progress={self.progress:.3f}"


class _SepConvStack(nn.Sequential):
    """(ReLU, depthwise kxk, pointwise 1x1, BN) twice; the first carries the stride."""

    def __init__(self, cin: int, cout: int, k: int, stride: int) -> None:
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(cin, cin, k, stride, k // 2, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1, bias=False),
            _bn(cout),
            nn.ReLU(inplace=True),  # on the BN's own output; the first ReLU reads a shared state
            nn.Conv2d(cout, cout, k, 1, k // 2, groups=cout, bias=False),
            nn.Conv2d(cout, cout, 1, bias=False),
            _bn(cout),
        )


class _FactorizedReduction(nn.Module):
    """Two 1x1/2 paths, the second shifted by one pixel, concatenated then BN (NASNet)."""

    def __init__(self, cin: int, cout: int, stride: int = 2) -> None:
        super().__init__()
        self.stride = stride
        if stride == 1:
            self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        else:
            self.path1 = nn.Conv2d(cin, cout // 2, 1, bias=False)
            self.path2 = nn.Conv2d(cin, cout - cout // 2, 1, bias=False)
        self.bn = _bn(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return self.bn(self.conv(x))
        p1 = self.path1(x[:, :, ::2, ::2])
        p2 = self.path2(F.pad(x, (0, 1, 0, 1))[:, :, 1::2, 1::2])
        return self.bn(torch.cat((p1, p2), 1))


class _Pool(nn.Module):
    def __init__(self, kind: str, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        if kind == "avg":
            self.pool: nn.Module = nn.AvgPool2d(3, stride, 1, count_include_pad=False)
        else:
            self.pool = nn.MaxPool2d(3, stride, 1)
        self.proj = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), _bn(cout)) if cin != cout else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        return self.proj(x) if self.proj is not None else x


def _make_op(name: str, cin: int, cout: int, stride: int) -> nn.Module:
    if name.startswith("sep_conv_"):
        return _SepConvStack(cin, cout, int(name[-1]), stride)
    if name in ("avg_pool_3x3", "max_pool_3x3"):
        return _Pool(name[:3], cin, cout, stride)
    if name == "identity":
        if stride == 1 and cin == cout:
            return nn.Identity()
        return nn.Sequential(nn.ReLU(), nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout))
    raise ValueError(f"unknown NASNet operation {name!r}; choose one of {OPS}")


class NASNetCell(nn.Module):
    """One NASNet cell built from a genotype.

    ``cin``/``cin_prev`` and ``level``/``level_prev`` are the widths and resolution levels
    (number of stride-2 steps so far) of ``h_i`` and ``h_{i-1}``; ``cin_prev=None`` means
    there is no earlier state and ``h_{i-1} = h_i`` unprojected (the first cell).
    """

    def __init__(
        self,
        genotype: Genotype,
        cin: int,
        cin_prev: int | None,
        level: int,
        level_prev: int,
        width: int,
        reduction: bool,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        blocks, concat = genotype
        if len(blocks) < 1 or any(s < 0 or s >= 2 + len(blocks) for s in concat):
            raise ValueError(f"malformed genotype {genotype}")
        self.concat = tuple(concat)
        self.reduction = reduction
        self.blocks_inputs = tuple((a[0], b[0]) for a, b in blocks)
        self.base = nn.Sequential(nn.ReLU(), nn.Conv2d(cin, width, 1, bias=False), _bn(width))
        if cin_prev is None:
            self.prev: nn.Module | None = None
            prev_ch = cin
        elif level_prev != level:
            if level - level_prev != 1:
                raise ValueError("h_{i-1} may be at most one reduction behind h_i")
            self.prev = nn.Sequential(nn.ReLU(), _FactorizedReduction(cin_prev, width, 2))
            prev_ch = width
        elif cin_prev != width:
            self.prev = nn.Sequential(
                nn.ReLU(), nn.Conv2d(cin_prev, width, 1, bias=False), _bn(width)
            )
            prev_ch = width
        else:
            self.prev = nn.Identity()
            prev_ch = width
        channels = [width, prev_ch]
        levels = [0, 0]  # relative to the cell input
        self.ops = nn.ModuleList()
        self.drops = nn.ModuleList()
        for pair in blocks:
            out_level = 0
            for state, op_name in pair:
                if not 0 <= state < len(channels):
                    raise ValueError(f"genotype block reads state {state} before it exists")
                stride = 2 if reduction and state < 2 else 1
                self.ops.append(_make_op(op_name, channels[state], width, stride))
                self.drops.append(
                    ScheduledDropPath(drop_path_rate) if op_name != "identity" else nn.Identity()
                )
                out_level = max(out_level, levels[state] + (stride == 2))
            channels.append(width)
            levels.append(out_level)
        final_level = levels[-1]
        # states to be concatenated that do not match the last block are reduced to it
        self.fixups = nn.ModuleDict()
        for s in self.concat:
            if channels[s] != width or levels[s] != final_level:
                stride = 2 if levels[s] != final_level else 1
                self.fixups[str(s)] = _FactorizedReduction(channels[s], width, stride)
        self.out_channels = width * len(self.concat)
        self.out_level = level + final_level

    def forward(self, x: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
        h_prev = x if self.prev is None else self.prev(prev if prev is not None else x)
        states = [self.base(x), h_prev]
        i = 0
        for a, b in self.blocks_inputs:
            left = self.drops[i](self.ops[i](states[a]))
            right = self.drops[i + 1](self.ops[i + 1](states[b]))
            states.append(left + right)
            i += 2
        out = [
            self.fixups[str(s)](states[s]) if str(s) in self.fixups else states[s]
            for s in self.concat
        ]
        return torch.cat(out, 1)


def _reduction_indices(num_cells: int, num_reductions: int) -> list[int]:
    return [int(k / (num_reductions + 1) * num_cells) for k in range(1, num_reductions + 1)]


class NASNet(ImageClassifier):
    """NASNet-A: ``N`` normal cells per stack, three stacks, reduction cells between them.

    ``num_filters`` is the width of the first stack's cells (the penultimate width is
    ``6 * num_filters * 4``); ``skip_reduction_input`` feeds a normal cell right after a
    reduction with the state two cells back instead of the reduction's input (Large).
    """

    # num_filters sets every cell's width (and the CIFAR stem's, times stem_multiplier);
    # the ImageNet stem keeps its 32 x stem_multiplier channels
    width_args = ("num_filters",)
    depth_args = ("cells_per_stack",)

    def __init__(
        self,
        cells_per_stack: int = 4,
        num_filters: int = 44,
        stem: str = "imagenet",
        stem_multiplier: float = 1.0,
        stem_stride: int = 1,
        skip_reduction_input: bool = False,
        normal_genotype: Genotype = NASNET_A_NORMAL,
        reduction_genotype: Genotype = NASNET_A_REDUCTION,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"unknown stem {stem!r}; choose 'imagenet' or 'cifar'")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        if cells_per_stack < 1 or num_filters < 4:
            raise ValueError(
                f"need cells_per_stack >= 1 and num_filters >= 4, got {cells_per_stack}, {num_filters}"
            )
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        num_cells = 3 * cells_per_stack
        reductions = _reduction_indices(num_cells, 2)
        num_stem_cells = 2 if stem == "imagenet" else 0
        self.num_stem_cells = num_stem_cells
        total_cells = num_cells + len(reductions) + num_stem_cells

        def rate(cell_index: int) -> float:
            return drop_path_rate * (cell_index + 1) / total_cells

        stem_ch = (
            int(32 * stem_multiplier) if stem == "imagenet" else int(num_filters * stem_multiplier)
        )
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, stem_ch, 3, 2, 0, bias=False), _bn(stem_ch)
            )
            stem_level = 1
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, stem_ch, 3, stem_stride, 1, bias=False), _bn(stem_ch)
            )
            stem_level = stem_stride - 1
        # (channels, level) of every state so far; None marks "no state" (before the stem)
        outputs: list[tuple[int, int] | None] = [None, (stem_ch, stem_level)]
        self.cells = nn.ModuleList()
        self.prev_index: list[int] = []  # which earlier output each cell reads as h_{i-1}
        cell_index = 0

        def add(genotype: Genotype, width: int, reduction: bool, prev_pos: int) -> None:
            nonlocal cell_index
            cur = outputs[-1]
            prev = outputs[prev_pos]
            assert cur is not None
            cell = NASNetCell(
                genotype,
                cur[0],
                None if prev is None else prev[0],
                cur[1],
                cur[1] if prev is None else prev[1],
                width,
                reduction,
                rate(cell_index),
            )
            self.cells.append(cell)
            self.prev_index.append(len(outputs) + prev_pos)
            outputs.append((cell.out_channels, cell.out_level))
            cell_index += 1

        scaling = 1.0 / 2**num_stem_cells
        for _ in range(num_stem_cells):
            add(reduction_genotype, int(num_filters * scaling), True, -2)
            scaling *= 2
        self.feature_info = []
        scaling = 1.0
        for i in range(num_cells):
            prev_pos = -2
            if i in reductions:
                if i:
                    stage_cell = len(self.cells) - 1
                    ch, lvl = outputs[-1]  # type: ignore[misc]
                    self.feature_info.append(FeatureInfo(ch, 2**lvl, f"cells.{stage_cell}"))
                scaling *= 2
                add(reduction_genotype, int(num_filters * scaling), True, -2)
                # Large reads the state two back from before the reduction was appended
                prev_pos = -3 if skip_reduction_input else -2
            add(normal_genotype, int(num_filters * scaling), False, prev_pos)
        ch, lvl = outputs[-1]  # type: ignore[misc]
        self.feature_info.append(FeatureInfo(ch, 2**lvl, f"cells.{len(self.cells) - 1}"))
        # cells pad their reductions; the ImageNet stem's unpadded 3x3 needs 3 pixels
        self.min_input_size = 3 if stem == "imagenet" else 1
        self.num_features = ch
        self.cam_target = f"cells.{len(self.cells) - 1}"
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(ch, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        outputs: list[torch.Tensor | None] = [None, self.stem(x)]
        for cell, p in zip(self.cells, self.prev_index):
            outputs.append(cell(outputs[-1], outputs[p]))
        return F.relu(outputs[-1])

    def set_drop_path_progress(self, progress: float) -> None:
        """ScheduledDropPath: scale every drop rate by ``progress`` (fraction of training done)."""
        if not 0.0 <= progress <= 1.0:
            raise ValueError(f"progress must be in [0, 1], got {progress}")
        for m in self.modules():
            if isinstance(m, ScheduledDropPath):
                m.progress = float(progress)

    def set_training_progress(self, progress: float) -> None:
        """Called by the training loop with the fraction of optimizer steps done."""
        self.set_drop_path_progress(min(1.0, max(0.0, float(progress))))


_PAPER = "Learning Transferable Architectures for Scalable Image Recognition"
_SRC = "paper Table 2 and 3 (ImageNet, params, mult-adds, top-1) and the TF-slim release configs"


@register_model(
    ModelCard(
        "nasnet",
        _PAPER,
        2018,
        "cnn",
        params_m=5.3,
        gmacs=0.564,
        top1=74.0,
        source=_SRC,
        notes="NASNet-A (4 @ 1056), 224px; auxiliary head not built",
    )
)
def nasnet_a_mobile(**kwargs: Any) -> NASNet:
    return build_model(NASNet, dict(cells_per_stack=4, num_filters=44), kwargs)


@register_model(
    ModelCard(
        "nasnet",
        _PAPER,
        2018,
        "cnn",
        params_m=88.9,
        gmacs=23.8,
        top1=82.7,
        img_size=331,
        source=_SRC,
        notes="NASNet-A (6 @ 4032), 331px; auxiliary head not built",
    )
)
def nasnet_a_large(**kwargs: Any) -> NASNet:
    return build_model(
        NASNet,
        dict(
            cells_per_stack=6,
            num_filters=168,
            stem_multiplier=3.0,
            skip_reduction_input=True,
            img_size=331,
        ),
        kwargs,
    )


@register_model(ModelCard("nasnet", _PAPER, 2018, "cnn", scale="cpu", img_size=32))
def nasnet_pico(**kwargs: Any) -> NASNet:
    """Strided CIFAR stem, one normal cell per stack (1 @ 384), 16 filters: grids 16, 8, 4."""
    return build_model(
        NASNet,
        dict(
            cells_per_stack=1,
            num_filters=16,
            stem="cifar",
            stem_multiplier=2.0,
            stem_stride=2,
            img_size=32,
        ),
        kwargs,
    )
