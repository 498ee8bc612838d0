"""DiT (*DiT: Efficient Vision Transformers with Dynamic Token Routing*, Ma et al., 2023).

A PVTv2 pyramid (overlapping patch embeddings, spatial-reduction attention, convolutional
feed-forward layers; the paper's DiT-B models build on PVTv2-B) in which every block
has a **routing gate**: a linear layer that scores each token's two paths, *through the
block* or *identity*. In training the decision is a hard Gumbel-softmax sample with the
straight-through estimator (the forward pass uses 0/1 decisions, the backward pass the
softmax's gradient); in eval it is the argmax, so the path is deterministic. A token that
takes the identity path stops there for the rest of its stage (*early stopping of feature
extraction*): its keep mask is the running product of its decisions, and a block updates
a token as ``x + keep * (block(x) - x)``, so later blocks leave a stopped token exactly as
it was. Stopped tokens still serve as keys and values for the tokens that continue.

The budget constraint is the model's auxiliary loss (``aux_loss``, added by the
classification task): with ``c_j`` the MACs per token of block ``j`` at the current grid
and ``k_j`` the fraction of tokens it processed in the last training pass,
``budget_weight * (sum_j c_j k_j / sum_j c_j - budget) ** 2``, the squared distance of
the executed fraction of block compute from the target ``budget`` (the form of the cost
constraint in *Learning Dynamic Routing for Semantic Segmentation*, whose layer-by-scale
routing space DiT's figure follows; DiT's own weighting of it is not public in code).
``executed_fraction()`` reports that fraction for the last pass, in train or eval mode.

Deviations, said plainly: the paper's routing space also lets a token choose its
*scaling* path (move to a coarser scale early through a patch embedding); here every
token moves to the next scale at the stage boundaries as in PVTv2, and routing chooses
depth only. The official repository (Maycbj/DiT) has published no code, so the gate's
form (one linear layer on the token entering the block), its initialisation (biased
towards the block path, so that about 90% of the tokens run through a whole stage when
training starts) and the default budget (0.85, the ratio of DiT-B5's 10.3 to PVTv2-B5's
11.8 GMACs) are this implementation's choices. A dense batch computes every block for
every token and masks the result, so the saved compute is counted, not realised as
speed. Written here because no maintained library provides token-routing transformers.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import DropPath, drop_path_rates
from ..layers.attention_variants import SpatialReductionAttention
from ..layers.helpers import init_trunc_normal_linear
from ._base import FeatureInfo, ImageClassifier, check_img_size
from ._registry import ModelCard, build_model, register_model

__all__ = ["DynamicTokenRoutingViT", "RoutingGate"]

EXIT, KEEP = 0, 1  # order of the gate's two logits


class RoutingGate(nn.Module):
    """Scores each token's two paths (identity, block) and decides between them.

    Training: a hard Gumbel-softmax sample at temperature ``tau`` with the straight-through
    estimator. Eval: the argmax. Returns the (B, N) keep decision (1 = through the block).
    """

    def __init__(self, dim: int, tau: float = 1.0, keep_bias: float = 2.0) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"gate temperature tau must be positive, got {tau}")
        self.tau, self.keep_bias = tau, keep_bias
        self.fc = nn.Linear(dim, 2)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.fc.weight)
        with torch.no_grad():
            self.fc.bias.copy_(torch.tensor([0.0, self.keep_bias]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(x)
        if self.training:
            return F.gumbel_softmax(logits, tau=self.tau, hard=True)[..., KEEP]
        return (logits[..., KEEP] > logits[..., EXIT]).to(x.dtype)


class ConvFeedForward(nn.Module):
    """PVTv2's feed-forward layer: fc1, 3x3 depthwise convolution, GELU, fc2."""

    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = self.fc1(x)
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, *hw)).flatten(2).transpose(1, 2)
        return self.drop(self.fc2(self.drop(self.act(x))))


class RoutedBlock(nn.Module):
    """A PVTv2 block with a routing gate in front of it."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        drop: float,
        drop_path: float,
        gate_tau: float,
        keep_bias: float,
    ) -> None:
        super().__init__()
        self.dim, self.sr_ratio = dim, sr_ratio
        self.hidden = int(dim * mlp_ratio)
        self.gate = RoutingGate(dim, gate_tau, keep_bias)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SpatialReductionAttention(dim, num_heads, sr_ratio, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ConvFeedForward(dim, self.hidden, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def block(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """The dense block (every token through attention and feed-forward)."""
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x), hw))

    def macs_per_token(self, hw: tuple[int, int]) -> float:
        """Multiply-accumulates of the block per query token on an ``hw`` grid."""
        d, n = self.dim, hw[0] * hw[1]
        kv_tokens = n
        reduce = 0.0
        if self.sr_ratio > 1:
            kv_tokens = (hw[0] // self.sr_ratio) * (hw[1] // self.sr_ratio)
            reduce = d * d * self.sr_ratio**2 * kv_tokens / n
        attn = 2 * d * d + 2 * d * d * kv_tokens / n + reduce + 2 * d * kv_tokens
        return attn + 2 * d * self.hidden + 9 * self.hidden

    def forward(
        self, x: torch.Tensor, hw: tuple[int, int], keep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keep = keep * self.gate(x)
        x = x + keep.unsqueeze(-1) * (self.block(x, hw) - x)
        return x, keep


class RoutedStage(nn.Module):
    """Overlapping patch embedding, routed blocks, LayerNorm; NCHW in and out.

    After a forward pass ``last_keep`` holds the (B, N, depth) keep masks (1 = the block
    processed the token) and ``last_used`` / ``last_total`` the block MACs spent and
    available (``last_used`` differentiable through the gates in training).
    """

    def __init__(
        self,
        cin: int,
        dim: int,
        kernel: int,
        stride: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        drop: float,
        dpr: list[float],
        gate_tau: float,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, kernel, stride, padding=kernel // 2)
        self.embed_norm = nn.LayerNorm(dim)
        # keep logit - exit logit at init: ln(depth) + 2.25 makes P(keep) ~ 1 - 0.105 / depth
        # per block, so that about 90% of the tokens run through the whole stage at first
        keep_bias = math.log(max(depth, 1)) + 2.25
        self.blocks = nn.ModuleList(
            RoutedBlock(dim, num_heads, mlp_ratio, sr_ratio, drop, dpr[j], gate_tau, keep_bias)
            for j in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.last_keep: torch.Tensor | None = None
        self.last_used: torch.Tensor | None = None
        self.last_total = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        b, c, h, w = x.shape
        x = self.embed_norm(x.flatten(2).transpose(1, 2))
        keep = x.new_ones(b, h * w)
        masks, used, total = [], x.new_zeros(()), 0.0
        for blk in self.blocks:
            x, keep = blk(x, (h, w), keep)
            cost = blk.macs_per_token((h, w))
            masks.append(keep)
            used = used + cost * keep.mean()
            total += cost
        self.last_keep = torch.stack(masks, dim=-1) if masks else x.new_ones(b, h * w, 0)
        self.last_used, self.last_total = used, total
        return self.norm(x).transpose(1, 2).reshape(b, c, h, w)


class DynamicTokenRoutingViT(ImageClassifier):
    """DiT: a PVTv2 pyramid whose tokens take data-dependent paths of different depth."""

    width_args = ("embed_dims",)
    depth_args = ("depths",)

    def __init__(
        self,
        embed_dims: tuple[int, ...] = (64, 128, 320, 512),
        depths: tuple[int, ...] = (3, 6, 40, 3),
        num_heads: tuple[int, ...] = (1, 2, 5, 8),
        mlp_ratios: tuple[float, ...] = (4, 4, 4, 4),
        sr_ratios: tuple[int, ...] = (8, 4, 2, 1),
        patch_size: int = 4,
        gate_tau: float = 1.0,
        budget: float = 0.85,
        budget_weight: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        n = len(embed_dims)
        lengths = [len(t) for t in (embed_dims, depths, num_heads, mlp_ratios, sr_ratios)]
        if not n or len(set(lengths)) != 1:
            raise ValueError(
                "embed_dims, depths, num_heads, mlp_ratios and sr_ratios need one entry per "
                f"stage, got lengths {lengths}"
            )
        if patch_size not in (2, 4):
            raise ValueError(f"patch_size must be 2 or 4 (first-stage stride), got {patch_size}")
        if not 0.0 < budget <= 1.0:
            raise ValueError(f"budget is a fraction of the block compute in (0, 1], got {budget}")
        if budget_weight < 0 or not math.isfinite(budget_weight):
            raise ValueError(f"budget_weight must be finite and >= 0, got {budget_weight}")
        check_img_size(img_size, 1, "DynamicTokenRoutingViT")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.budget, self.budget_weight = budget, budget_weight
        # padded strided patch embeddings map any input size onto the stages
        dpr = drop_path_rates(drop_path_rate, depths)
        stages, cin, stride = [], in_chans, 1
        self.feature_info = []
        for i in range(n):
            s = patch_size if i == 0 else 2
            stride *= s
            stages.append(
                RoutedStage(
                    cin,
                    embed_dims[i],
                    2 * patch_size - 1 if i == 0 else 3,
                    s,
                    depths[i],
                    num_heads[i],
                    mlp_ratios[i],
                    sr_ratios[i],
                    drop_rate,
                    dpr[i],
                    gate_tau,
                )
            )
            self.feature_info.append(FeatureInfo(embed_dims[i], stride, f"stages.{i}"))
            cin = embed_dims[i]
        self.stages = nn.Sequential(*stages)
        self.num_features = embed_dims[-1]
        self.cam_target = f"stages.{n - 1}"
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self.apply(init_trunc_normal_linear)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # PVTv2's convolution init: N(0, 2 / fan_out) with fan_out per group
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, std=math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, RoutingGate):
                m.reset_parameters()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x.mean(dim=(2, 3)))
        return x if pre_logits else self.head(x)

    def executed_fraction(self) -> torch.Tensor:
        """Fraction of the block MACs the last forward pass spent (1 = dense)."""
        stages = list(self.stages)
        if any(s.last_used is None for s in stages):
            raise RuntimeError("executed_fraction needs a forward pass first")
        total = sum(s.last_total for s in stages)
        if total == 0:
            return torch.ones(())
        return sum((s.last_used for s in stages), torch.zeros(())) / total

    def aux_loss(self, targets: torch.Tensor | None = None) -> torch.Tensor | None:
        """The weighted budget constraint of the last training pass (None in eval mode or
        with ``budget_weight=0``)."""
        if not (self.training and self.budget_weight):
            return None
        return self.budget_weight * (self.executed_fraction() - self.budget) ** 2


_PAPER = "DiT: Efficient Vision Transformers with Dynamic Token Routing"
_NOTE = (
    "PVTv2-{0} layout with a routing gate per block; the paper's parameter table is not "
    "available to check against, so no count is promised"
)


def _dit(defaults: dict[str, Any], kwargs: dict[str, Any]) -> DynamicTokenRoutingViT:
    return build_model(DynamicTokenRoutingViT, defaults, kwargs)


_PVT_V2_HEAD = dict(mlp_ratios=(8, 8, 4, 4))


@register_model(
    ModelCard("dit_routing", _PAPER, 2023, "vit", scale="other", notes=_NOTE.format("B1"))
)
def dit_b1(**kwargs: Any) -> DynamicTokenRoutingViT:
    return _dit(dict(depths=(2, 2, 2, 2), **_PVT_V2_HEAD), kwargs)


@register_model(
    ModelCard("dit_routing", _PAPER, 2023, "vit", scale="other", notes=_NOTE.format("B2"))
)
def dit_b2(**kwargs: Any) -> DynamicTokenRoutingViT:
    return _dit(dict(depths=(3, 4, 6, 3), **_PVT_V2_HEAD), kwargs)


@register_model(
    ModelCard("dit_routing", _PAPER, 2023, "vit", scale="other", notes=_NOTE.format("B3"))
)
def dit_b3(**kwargs: Any) -> DynamicTokenRoutingViT:
    return _dit(dict(depths=(3, 4, 18, 3), **_PVT_V2_HEAD), kwargs)


@register_model(
    ModelCard("dit_routing", _PAPER, 2023, "vit", scale="other", notes=_NOTE.format("B4"))
)
def dit_b4(**kwargs: Any) -> DynamicTokenRoutingViT:
    return _dit(dict(depths=(3, 8, 27, 3), **_PVT_V2_HEAD), kwargs)


@register_model(
    ModelCard(
        "dit_routing",
        _PAPER,
        2023,
        "vit",
        scale="other",
        gmacs=10.3,
        top1=84.8,
        source="DiT paper abstract (DiT-B5: 84.8% top-1 with 10.3 GFLOPs at 224)",
        notes=_NOTE.format("B5"),
    )
)
def dit_b5(**kwargs: Any) -> DynamicTokenRoutingViT:
    return _dit({}, kwargs)


@register_model(
    ModelCard(
        "dit_routing",
        _PAPER,
        2023,
        "vit",
        scale="cpu",
        img_size=32,
        notes="stride-2 stem: grids 16/8/4/2; routing gate in front of every block",
    )
)
def dit_pico(**kwargs: Any) -> DynamicTokenRoutingViT:
    return _dit(
        dict(
            embed_dims=(16, 32, 64, 128),
            depths=(1, 2, 2, 1),
            num_heads=(1, 2, 4, 8),
            mlp_ratios=(4, 4, 4, 4),
            sr_ratios=(4, 2, 1, 1),
            patch_size=2,
            img_size=32,
        ),
        kwargs,
    )
