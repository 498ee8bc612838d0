"""Inception-v3, Inception-v4 and Inception-ResNet-v2.

*Rethinking the Inception Architecture for Computer Vision* (Szegedy et al., 2016) and
*Inception-v4, Inception-ResNet and the Impact of Residual Connections* (Szegedy et al.,
2017). Every convolution is conv + BN (eps 1e-3) + ReLU, unpadded unless the branch
keeps the grid; the canonical input is 299x299 (grids 35, 17, 8).

- Inception-v3: the released architecture (Figures 5-7 modules, grid reductions of
  Figure 10), widths of the official release; the auxiliary classifier on the 17x17 grid
  is optional (``aux_logits=False`` by default, 23.83M parameters; 27.16M with it). With
  it, ``aux_loss(targets)`` gives the training task the auxiliary head's cross-entropy on
  the same soft targets, weighted by ``aux_weight`` (0.4, the weight of the release's
  training script; the paper gives none).
- Inception-v4: stem of Figure 3, 4 x Inception-A, Reduction-A (k, l, m, n = 192, 224,
  256, 384), 7 x Inception-B, Reduction-B, 3 x Inception-C (Figures 4-8).
- Inception-ResNet-v2: residual Inception blocks whose branch is scaled before it is
  added (``res_scales``, 0.17 / 0.10 / 0.20 for the 35 / 17 / 8 grids, inside the
  paper's 0.1-0.3 range). Layout of the official release: the v3-style stem followed by
  a 320-wide mixed block, 10 / 20 / 10 residual blocks, and a 1x1 convolution to 1536
  channels. As in the release, the last 8x8 block has no ReLU and adds its branch
  unscaled (``last_res_scale=1.0``). The paper's Figure 15 schematic draws the Figure 3
  stem and 5 / 10 / 5 blocks; the 55.8M parameter figure is the release's.

``stem="cifar"`` (for the CPU variants) replaces the stem by two 3x3 stride-1
convolutions and pads the stride-2 reductions so that 32x32 inputs give 32/16/8 grids;
``width_mult`` scales every width. Inception-v3 and -v4 have no residual branches, so
they refuse a non-zero ``drop_path_rate``; Inception-ResNet-v2 drops residual branches.

The 3x3 stride-1 average pools of the pooling branches divide by the number of valid
(unpadded) pixels (``count_include_pad=False``): the release pools with TensorFlow's
'SAME' padding, which leaves padding out of the mean (torchvision's port counts it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from ..layers import DropPath, drop_path_rates
from ..layers.conv import ConvNormAct
from ._base import FeatureInfo, ImageClassifier, reject_drop_path, to_2tuple
from ._registry import ModelCard, build_model, register_model

__all__ = ["InceptionResNetV2", "InceptionV3", "InceptionV4"]

Width = Callable[[int], int]


def _c(cin: int, cout: int, k: int | tuple[int, int], s: int = 1, p: Any = 0) -> ConvNormAct:
    return ConvNormAct(cin, cout, k, s, padding=p, norm_eps=1e-3)


def _width_fn(width_mult: float) -> Width:
    if width_mult <= 0:
        raise ValueError(f"width_mult must be positive, got {width_mult}")
    return lambda n: max(1, round(n * width_mult))


def _avg_pool() -> nn.AvgPool2d:
    return nn.AvgPool2d(3, 1, 1, count_include_pad=False)


class _Branches(nn.Module):
    """Parallel branches whose outputs are concatenated along channels."""

    def __init__(self, *branches: nn.Module, out_chs: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.out_chs = out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], 1)


# the smallest input side each stem takes: the ImageNet stem's unpadded convolutions and
# reductions need 75 pixels; the CIFAR stem pads every reduction, so any size works
_MIN_SIDE = {"imagenet": 75, "cifar": 1}


def _check_stem(stem: str, img_size: int | tuple[int, int]) -> int:
    if stem not in _MIN_SIDE:
        raise ValueError(f"unknown stem {stem!r}; choose 'imagenet' or 'cifar'")
    smallest = _MIN_SIDE[stem]
    if min(to_2tuple(img_size)) < smallest:
        raise ValueError(
            f"img_size {img_size} is too small for the {stem!r} stem (at least {smallest}; "
            "the canonical size is 299, use stem='cifar' for 32x32)"
        )
    return 0 if stem == "imagenet" else 1  # padding of the stride-2 reductions


# ----------------------------------------------------------------------------------
# Inception-v3 modules (Rethinking the Inception Architecture)
# ----------------------------------------------------------------------------------


def _v3_a(cin: int, pool: int, w: Width) -> _Branches:
    """35x35 module with factorized 5x5 (Figure 5)."""
    return _Branches(
        _c(cin, w(64), 1),
        nn.Sequential(_c(cin, w(48), 1), _c(w(48), w(64), 5, p=2)),
        nn.Sequential(_c(cin, w(64), 1), _c(w(64), w(96), 3, p=1), _c(w(96), w(96), 3, p=1)),
        nn.Sequential(_avg_pool(), _c(cin, w(pool), 1)),
        out_chs=2 * w(64) + w(96) + w(pool),
    )


def _v3_b(cin: int, w: Width, rp: int) -> _Branches:
    """35 -> 17 grid reduction (Figure 10)."""
    return _Branches(
        _c(cin, w(384), 3, 2, rp),
        nn.Sequential(_c(cin, w(64), 1), _c(w(64), w(96), 3, p=1), _c(w(96), w(96), 3, 2, rp)),
        nn.MaxPool2d(3, 2, rp),
        out_chs=w(384) + w(96) + cin,
    )


def _v3_c(cin: int, c7: int, w: Width) -> _Branches:
    """17x17 module with 1x7 / 7x1 factorization (Figure 6)."""
    c = w(c7)
    return _Branches(
        _c(cin, w(192), 1),
        nn.Sequential(_c(cin, c, 1), _c(c, c, (1, 7), p=(0, 3)), _c(c, w(192), (7, 1), p=(3, 0))),
        nn.Sequential(
            _c(cin, c, 1),
            _c(c, c, (7, 1), p=(3, 0)),
            _c(c, c, (1, 7), p=(0, 3)),
            _c(c, c, (7, 1), p=(3, 0)),
            _c(c, w(192), (1, 7), p=(0, 3)),
        ),
        nn.Sequential(_avg_pool(), _c(cin, w(192), 1)),
        out_chs=4 * w(192),
    )


def _v3_d(cin: int, w: Width, rp: int) -> _Branches:
    """17 -> 8 grid reduction."""
    return _Branches(
        nn.Sequential(_c(cin, w(192), 1), _c(w(192), w(320), 3, 2, rp)),
        nn.Sequential(
            _c(cin, w(192), 1),
            _c(w(192), w(192), (1, 7), p=(0, 3)),
            _c(w(192), w(192), (7, 1), p=(3, 0)),
            _c(w(192), w(192), 3, 2, rp),
        ),
        nn.MaxPool2d(3, 2, rp),
        out_chs=w(320) + w(192) + cin,
    )


class _SplitPair(nn.Module):
    """A 1x3 and a 3x1 convolution applied side by side (expanded filter bank, Figure 7)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.a = _c(cin, cout, (1, 3), p=(0, 1))
        self.b = _c(cin, cout, (3, 1), p=(1, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], 1)


def _v3_e(cin: int, w: Width) -> _Branches:
    """8x8 module with expanded filter bank outputs (Figure 7)."""
    return _Branches(
        _c(cin, w(320), 1),
        nn.Sequential(_c(cin, w(384), 1), _SplitPair(w(384), w(384))),
        nn.Sequential(_c(cin, w(448), 1), _c(w(448), w(384), 3, p=1), _SplitPair(w(384), w(384))),
        nn.Sequential(_avg_pool(), _c(cin, w(192), 1)),
        out_chs=w(320) + 4 * w(384) + w(192),
    )


class _AuxHead(nn.Module):
    """Auxiliary classifier on the 17x17 grid (5x5/3 average pool, 1x1 conv, 5x5 conv, FC)."""

    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(5, 3)
        self.conv0 = _c(cin, 128, 1)
        self.conv1 = _c(128, 768, 5)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.conv0(self.pool(x)))
        return self.fc(x.mean((2, 3)))


def _cifar_stem(in_chans: int, mid: int, out: int) -> nn.Sequential:
    return nn.Sequential(_c(in_chans, mid, 3, p=1), _c(mid, out, 3, p=1))


class _InceptionBase(ImageClassifier):
    """Shared head and stage bookkeeping for the three Inception networks."""

    def _finish(
        self, stage_chs: list[int], reduction0: int, num_features: int, drop_rate: float
    ) -> None:
        self.feature_info = [
            FeatureInfo(c, reduction0 * 2**i, f"stage{i + 1}") for i, c in enumerate(stage_chs)
        ]
        self.cam_target = "stage3"
        self.num_features = num_features
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(num_features, self.num_classes) if self.num_classes else nn.Identity()


class InceptionV3(_InceptionBase):
    """Inception-v3. In training mode with ``aux_logits=True`` the auxiliary classifier's
    logits of the last forward are kept in ``self.aux_out``; ``aux_loss(targets)`` turns
    them into the weighted auxiliary loss that the classification task adds."""

    # a_pool and c7 are canonical widths that width_mult multiplies like every other width,
    # so width_mult alone scales every module; the lengths of a_pool and c7 are depths too
    width_args = ("width_mult",)
    depth_args = ("num_e",)

    def __init__(
        self,
        a_pool: tuple[int, ...] = (32, 64, 64),
        c7: tuple[int, ...] = (128, 160, 160, 192),
        num_e: int = 2,
        width_mult: float = 1.0,
        stem: str = "imagenet",
        aux_logits: bool = False,
        aux_weight: float = 0.4,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 299,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        reject_drop_path(drop_path_rate, "InceptionV3")
        rp = _check_stem(stem, img_size)
        self.min_input_size = _MIN_SIDE[stem]
        if not a_pool or not c7 or num_e < 1:
            raise ValueError("a_pool and c7 need at least one entry and num_e >= 1")
        if aux_logits and (stem != "imagenet" or width_mult != 1.0):
            raise ValueError("aux_logits needs stem='imagenet' and width_mult=1.0")
        if not aux_weight >= 0:
            raise ValueError(f"aux_weight must be a non-negative number, got {aux_weight}")
        self.aux_weight = float(aux_weight)
        w = _width_fn(width_mult)
        self.num_classes, self.in_chans = num_classes, in_chans
        if stem == "imagenet":
            self.stem = nn.Sequential(
                _c(in_chans, w(32), 3, 2),
                _c(w(32), w(32), 3),
                _c(w(32), w(64), 3, p=1),
                nn.MaxPool2d(3, 2),
                _c(w(64), w(80), 1),
                _c(w(80), w(192), 3),
                nn.MaxPool2d(3, 2),
            )
        else:
            self.stem = _cifar_stem(in_chans, w(64), w(192))
        cin, blocks = w(192), []
        for pool in a_pool:
            blocks.append(_v3_a(cin, pool, w))
            cin = blocks[-1].out_chs
        self.stage1 = nn.Sequential(*blocks)
        chs = [cin]
        blocks = [_v3_b(cin, w, rp)]
        cin = blocks[-1].out_chs
        for c in c7:
            blocks.append(_v3_c(cin, c, w))
            cin = blocks[-1].out_chs
        self.stage2 = nn.Sequential(*blocks)
        chs.append(cin)
        self.aux = _AuxHead(cin, num_classes) if aux_logits and num_classes else None
        self.aux_out: torch.Tensor | None = None
        blocks = [_v3_d(cin, w, rp)]
        cin = blocks[-1].out_chs
        for _ in range(num_e):
            blocks.append(_v3_e(cin, w))
            cin = blocks[-1].out_chs
        self.stage3 = nn.Sequential(*blocks)
        chs.append(cin)
        self._finish(chs, 8 if stem == "imagenet" else 1, cin, drop_rate)

    def reset_classifier(self, num_classes: int) -> None:
        super().reset_classifier(num_classes)
        if self.aux is not None:
            self.aux = (
                _AuxHead(self.aux.conv0.conv.in_channels, num_classes) if num_classes else None
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.stage2(self.stage1(self.stem(x)))
        self.aux_out = self.aux(x) if self.aux is not None and self.training else None
        return self.stage3(x)

    def aux_loss(self, targets: torch.Tensor | None = None) -> torch.Tensor | None:
        """``aux_weight`` times the auxiliary head's soft cross-entropy on ``targets``
        ((B, num_classes) soft targets of the last training forward), or None without
        an auxiliary head, outside training or without targets."""
        if self.aux_out is None or not self.training or targets is None:
            return None
        if targets.shape != self.aux_out.shape:
            raise ValueError(
                f"aux_loss needs soft targets of shape {tuple(self.aux_out.shape)} (the last "
                f"batch x num_classes), got {tuple(targets.shape)}"
            )
        logp = torch.log_softmax(self.aux_out.float(), dim=-1)
        return self.aux_weight * -(targets.float() * logp).sum(-1).mean()


# ----------------------------------------------------------------------------------
# Inception-v4 modules
# ----------------------------------------------------------------------------------


def _v4_stem(in_chans: int, w: Width) -> nn.Sequential:
    """Figure 3: 299x299x3 -> 35x35x384."""
    return nn.Sequential(
        _c(in_chans, w(32), 3, 2),
        _c(w(32), w(32), 3),
        _c(w(32), w(64), 3, p=1),
        _Branches(nn.MaxPool2d(3, 2), _c(w(64), w(96), 3, 2), out_chs=w(64) + w(96)),
        _Branches(
            nn.Sequential(_c(w(64) + w(96), w(64), 1), _c(w(64), w(96), 3)),
            nn.Sequential(
                _c(w(64) + w(96), w(64), 1),
                _c(w(64), w(64), (7, 1), p=(3, 0)),
                _c(w(64), w(64), (1, 7), p=(0, 3)),
                _c(w(64), w(96), 3),
            ),
            out_chs=2 * w(96),
        ),
        _Branches(_c(2 * w(96), w(192), 3, 2), nn.MaxPool2d(3, 2), out_chs=w(192) + 2 * w(96)),
    )


def _v4_a(cin: int, w: Width) -> _Branches:
    """Figure 4."""
    return _Branches(
        _c(cin, w(96), 1),
        nn.Sequential(_c(cin, w(64), 1), _c(w(64), w(96), 3, p=1)),
        nn.Sequential(_c(cin, w(64), 1), _c(w(64), w(96), 3, p=1), _c(w(96), w(96), 3, p=1)),
        nn.Sequential(_avg_pool(), _c(cin, w(96), 1)),
        out_chs=4 * w(96),
    )


def _v4_red_a(cin: int, w: Width, rp: int, k: int, l: int, m: int, n: int) -> _Branches:  # noqa: E741
    """Figure 7: 35 -> 17 reduction with filter counts k, l, m, n (Table 1)."""
    return _Branches(
        _c(cin, w(n), 3, 2, rp),
        nn.Sequential(_c(cin, w(k), 1), _c(w(k), w(l), 3, p=1), _c(w(l), w(m), 3, 2, rp)),
        nn.MaxPool2d(3, 2, rp),
        out_chs=w(n) + w(m) + cin,
    )


def _v4_b(cin: int, w: Width) -> _Branches:
    """Figure 5."""
    return _Branches(
        _c(cin, w(384), 1),
        nn.Sequential(
            _c(cin, w(192), 1),
            _c(w(192), w(224), (1, 7), p=(0, 3)),
            _c(w(224), w(256), (7, 1), p=(3, 0)),
        ),
        nn.Sequential(
            _c(cin, w(192), 1),
            _c(w(192), w(192), (7, 1), p=(3, 0)),
            _c(w(192), w(224), (1, 7), p=(0, 3)),
            _c(w(224), w(224), (7, 1), p=(3, 0)),
            _c(w(224), w(256), (1, 7), p=(0, 3)),
        ),
        nn.Sequential(_avg_pool(), _c(cin, w(128), 1)),
        out_chs=w(384) + 2 * w(256) + w(128),
    )


def _v4_red_b(cin: int, w: Width, rp: int) -> _Branches:
    """Figure 8: 17 -> 8 reduction."""
    return _Branches(
        nn.Sequential(_c(cin, w(192), 1), _c(w(192), w(192), 3, 2, rp)),
        nn.Sequential(
            _c(cin, w(256), 1),
            _c(w(256), w(256), (1, 7), p=(0, 3)),
            _c(w(256), w(320), (7, 1), p=(3, 0)),
            _c(w(320), w(320), 3, 2, rp),
        ),
        nn.MaxPool2d(3, 2, rp),
        out_chs=w(192) + w(320) + cin,
    )


def _v4_c(cin: int, w: Width) -> _Branches:
    """Figure 6."""
    return _Branches(
        _c(cin, w(256), 1),
        nn.Sequential(_c(cin, w(384), 1), _SplitPair(w(384), w(256))),
        nn.Sequential(
            _c(cin, w(384), 1),
            _c(w(384), w(448), (1, 3), p=(0, 1)),
            _c(w(448), w(512), (3, 1), p=(1, 0)),
            _SplitPair(w(512), w(256)),
        ),
        nn.Sequential(_avg_pool(), _c(cin, w(256), 1)),
        out_chs=6 * w(256),
    )


class InceptionV4(_InceptionBase):
    """Inception-v4 (pure Inception, no residual connections)."""

    # width_mult multiplies every width
    width_args = ("width_mult",)
    depth_args = ("depths",)

    def __init__(
        self,
        depths: tuple[int, int, int] = (4, 7, 3),
        width_mult: float = 1.0,
        stem: str = "imagenet",
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 299,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        reject_drop_path(drop_path_rate, "InceptionV4")
        rp = _check_stem(stem, img_size)
        self.min_input_size = _MIN_SIDE[stem]
        if len(depths) != 3 or min(depths) < 1:
            raise ValueError(
                f"depths must be three positive ints (4, 7, 3 in the paper), got {depths}"
            )
        w = _width_fn(width_mult)
        self.num_classes, self.in_chans = num_classes, in_chans
        self.stem = (
            _v4_stem(in_chans, w) if stem == "imagenet" else _cifar_stem(in_chans, w(64), w(384))
        )
        cin, chs = w(384), []
        blocks: list[nn.Module] = []
        for _ in range(depths[0]):
            blocks.append(_v4_a(cin, w))
            cin = blocks[-1].out_chs
        self.stage1 = nn.Sequential(*blocks)
        chs.append(cin)
        blocks = [_v4_red_a(cin, w, rp, 192, 224, 256, 384)]
        cin = blocks[-1].out_chs
        for _ in range(depths[1]):
            blocks.append(_v4_b(cin, w))
            cin = blocks[-1].out_chs
        self.stage2 = nn.Sequential(*blocks)
        chs.append(cin)
        blocks = [_v4_red_b(cin, w, rp)]
        cin = blocks[-1].out_chs
        for _ in range(depths[2]):
            blocks.append(_v4_c(cin, w))
            cin = blocks[-1].out_chs
        self.stage3 = nn.Sequential(*blocks)
        chs.append(cin)
        self._finish(chs, 8 if stem == "imagenet" else 1, cin, drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.stage3(self.stage2(self.stage1(self.stem(x))))


# ----------------------------------------------------------------------------------
# Inception-ResNet-v2
# ----------------------------------------------------------------------------------


class InceptionResBlock(nn.Module):
    """Residual Inception block: ``act(x + scale * up(concat(branches(x))))``.

    ``up`` is a linear 1x1 convolution (with bias, no BN) back to the input width; the
    scaling of the residual branch is what the paper uses to keep very wide residual
    Inception networks stable.
    """

    def __init__(
        self,
        branches: _Branches,
        channels: int,
        scale: float,
        act: bool = True,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.branches = branches
        self.up = nn.Conv2d(branches.out_chs, channels, 1, bias=True)
        self.scale = scale
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act = nn.ReLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.drop_path(self.scale * self.up(self.branches(x))))


def _ir_a(cin: int, w: Width) -> _Branches:
    """Inception-ResNet-A branches (35x35 grid)."""
    return _Branches(
        _c(cin, w(32), 1),
        nn.Sequential(_c(cin, w(32), 1), _c(w(32), w(32), 3, p=1)),
        nn.Sequential(_c(cin, w(32), 1), _c(w(32), w(48), 3, p=1), _c(w(48), w(64), 3, p=1)),
        out_chs=2 * w(32) + w(64),
    )


def _ir_b(cin: int, w: Width) -> _Branches:
    """Inception-ResNet-B branches (17x17 grid)."""
    return _Branches(
        _c(cin, w(192), 1),
        nn.Sequential(
            _c(cin, w(128), 1),
            _c(w(128), w(160), (1, 7), p=(0, 3)),
            _c(w(160), w(192), (7, 1), p=(3, 0)),
        ),
        out_chs=2 * w(192),
    )


def _ir_c(cin: int, w: Width) -> _Branches:
    """Inception-ResNet-C branches (8x8 grid)."""
    return _Branches(
        _c(cin, w(192), 1),
        nn.Sequential(
            _c(cin, w(192), 1),
            _c(w(192), w(224), (1, 3), p=(0, 1)),
            _c(w(224), w(256), (3, 1), p=(1, 0)),
        ),
        out_chs=w(192) + w(256),
    )


class InceptionResNetV2(_InceptionBase):
    """Inception-ResNet-v2 with residual scaling (``res_scales`` per grid; the last,
    linear block adds its branch with ``last_res_scale``, 1.0 in the release)."""

    # width_mult multiplies every width
    width_args = ("width_mult",)
    depth_args = ("depths",)

    def __init__(
        self,
        depths: tuple[int, int, int] = (10, 20, 10),
        res_scales: tuple[float, float, float] = (0.17, 0.10, 0.20),
        last_res_scale: float = 1.0,
        width_mult: float = 1.0,
        stem: str = "imagenet",
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 299,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        rp = _check_stem(stem, img_size)
        self.min_input_size = _MIN_SIDE[stem]
        if len(depths) != 3 or min(depths) < 1:
            raise ValueError(
                f"depths must be three positive ints (10, 20, 10 released), got {depths}"
            )
        if len(res_scales) != 3:
            raise ValueError(f"res_scales needs one scale per grid, got {res_scales}")
        w = _width_fn(width_mult)
        self.num_classes, self.in_chans = num_classes, in_chans
        if stem == "imagenet":
            stem_layers: list[nn.Module] = [
                _c(in_chans, w(32), 3, 2),
                _c(w(32), w(32), 3),
                _c(w(32), w(64), 3, p=1),
                nn.MaxPool2d(3, 2),
                _c(w(64), w(80), 1),
                _c(w(80), w(192), 3),
                nn.MaxPool2d(3, 2),
            ]
        else:
            stem_layers = list(_cifar_stem(in_chans, w(64), w(192)))
        stem_layers.append(
            _Branches(
                _c(w(192), w(96), 1),
                nn.Sequential(_c(w(192), w(48), 1), _c(w(48), w(64), 5, p=2)),
                nn.Sequential(
                    _c(w(192), w(64), 1), _c(w(64), w(96), 3, p=1), _c(w(96), w(96), 3, p=1)
                ),
                nn.Sequential(_avg_pool(), _c(w(192), w(64), 1)),
                out_chs=2 * w(96) + 2 * w(64),
            )
        )
        self.stem = nn.Sequential(*stem_layers)
        dpr = drop_path_rates(drop_path_rate, depths)
        cin, chs = stem_layers[-1].out_chs, []
        self.stage1 = nn.Sequential(
            *[InceptionResBlock(_ir_a(cin, w), cin, res_scales[0], drop_path=d) for d in dpr[0]]
        )
        chs.append(cin)
        red_a = _v4_red_a(cin, w, rp, 256, 256, 384, 384)
        cin = red_a.out_chs
        self.stage2 = nn.Sequential(
            red_a,
            *[InceptionResBlock(_ir_b(cin, w), cin, res_scales[1], drop_path=d) for d in dpr[1]],
        )
        chs.append(cin)
        red_b = _Branches(
            nn.Sequential(_c(cin, w(256), 1), _c(w(256), w(384), 3, 2, rp)),
            nn.Sequential(_c(cin, w(256), 1), _c(w(256), w(288), 3, 2, rp)),
            nn.Sequential(
                _c(cin, w(256), 1), _c(w(256), w(288), 3, p=1), _c(w(288), w(320), 3, 2, rp)
            ),
            nn.MaxPool2d(3, 2, rp),
            out_chs=w(384) + w(288) + w(320) + cin,
        )
        cin = red_b.out_chs
        last = len(dpr[2]) - 1
        self.stage3 = nn.Sequential(
            red_b,
            *[
                InceptionResBlock(
                    _ir_c(cin, w),
                    cin,
                    res_scales[2] if i < last else last_res_scale,
                    act=i < last,
                    drop_path=d,
                )
                for i, d in enumerate(dpr[2])
            ],
            _c(cin, w(1536), 1),
        )
        chs.append(w(1536))
        self._finish(chs, 8 if stem == "imagenet" else 1, w(1536), drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.stage3(self.stage2(self.stage1(self.stem(x))))


# ----------------------------------------------------------------------------------
# Registered variants
# ----------------------------------------------------------------------------------

_V3 = "Rethinking the Inception Architecture for Computer Vision"
_V4 = "Inception-v4, Inception-ResNet and the Impact of Residual Connections on Learning"


@register_model(
    ModelCard(
        "inception_v3",
        _V3,
        2016,
        "cnn",
        params_m=23.83,
        top1=78.8,
        img_size=299,
        source="params: official release without the auxiliary classifier (23,834,568; "
        "27.16M with it); top-1 error 21.2 single crop (paper Table 3, Inception-v3 BN-auxiliary)",
    )
)
def inception_v3(**kwargs: Any) -> InceptionV3:
    return build_model(InceptionV3, {}, kwargs)


@register_model(
    ModelCard(
        "inception_v4",
        _V4,
        2017,
        "cnn",
        params_m=42.68,
        top1=80.0,
        img_size=299,
        source="params: official release (42.7M); top-1 error 20.0 single crop (paper Table 2)",
    )
)
def inception_v4(**kwargs: Any) -> InceptionV4:
    return build_model(InceptionV4, {}, kwargs)


@register_model(
    ModelCard(
        "inception_resnet_v2",
        _V4,
        2017,
        "cnn",
        params_m=55.84,
        top1=80.1,
        img_size=299,
        source="params: official release (55.8M); top-1 error 19.9 single crop (paper Table 2)",
    )
)
def inception_resnet_v2(**kwargs: Any) -> InceptionResNetV2:
    return build_model(InceptionResNetV2, {}, kwargs)


_CPU: dict[str, Any] = dict(stem="cifar", img_size=32)


@register_model(ModelCard("inception_v3", _V3, 2016, "cnn", scale="cpu", img_size=32))
def inception_v3_pico(**kwargs: Any) -> InceptionV3:
    """One module of each kind at 1/8 width, CIFAR stem: grids 32, 16, 8."""
    return build_model(
        InceptionV3, dict(a_pool=(32,), c7=(128,), num_e=1, width_mult=0.125, **_CPU), kwargs
    )


@register_model(ModelCard("inception_v4", _V4, 2017, "cnn", scale="cpu", img_size=32))
def inception_v4_pico(**kwargs: Any) -> InceptionV4:
    """One module of each kind at 1/8 width, CIFAR stem: grids 32, 16, 8."""
    return build_model(InceptionV4, dict(depths=(1, 1, 1), width_mult=0.125, **_CPU), kwargs)


@register_model(ModelCard("inception_resnet_v2", _V4, 2017, "cnn", scale="cpu", img_size=32))
def inception_resnet_v2_pico(**kwargs: Any) -> InceptionResNetV2:
    """Two residual blocks per grid at 1/8 width, CIFAR stem: grids 32, 16, 8."""
    return build_model(InceptionResNetV2, dict(depths=(2, 2, 2), width_mult=0.125, **_CPU), kwargs)
