"""MLP-KAN: a transformer whose feed-forward layer is a mixture of MLP and KAN experts.

*MLP-KAN: Unifying Deep Representation and Function Learning* (2024) embeds a
mixture-of-experts feed-forward layer in a DeiT-style vision transformer: some experts
are MLPs (representation learning) and some are KANs with FasterKAN's reflectional switch
basis (function learning); a linear router (no bias) picks the top-k experts per token and
mixes their outputs with the softmax of the selected router scores.

As in the official release (``MoE_KAN_MLP``): 8 experts, 4 MLPs ``dim -> expert_hidden ->
dim`` (GELU) and 4 FasterKANs ``dim -> expert_hidden // 2 -> dim``, with ``expert_hidden``
192 at every DeiT size, top-2 routing. Each FasterKAN layer is LayerNorm, then the
reflectional switch basis ``1 - tanh((x - c_k) / 0.33)^2`` on 8 centres in [-2, 2] and a
linear map, without a base (SiLU) branch. The release trains without an auxiliary loss;
a load-balancing term (fraction routed times mean gate probability, summed over the
blocks) is available with ``aux_loss_weight > 0`` and is off by default.

Deviation: every expert runs on every token and unselected outputs are weighted by zero
(a dense formulation, exact for the output, simple, and the right speed trade-off for
the few experts of the CPU-scale variants).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import Attention, DropPath, Mlp, PatchEmbed
from ..layers.kan import KANLinear
from ._base import FeatureInfo, ImageClassifier
from ._registry import ModelCard, build_model, register_model

__all__ = ["MLPKAN", "MLPKANBlock", "MoEFeedForward"]


class KANExpert(nn.Module):
    """A two-layer FasterKAN dim -> hidden -> dim: each layer is LayerNorm, the basis, and a
    linear map of the basis features (no base branch)."""

    def __init__(self, dim: int, hidden: int, basis: str, n_basis: int) -> None:
        super().__init__()
        opts: dict[str, Any] = dict(n_basis=n_basis)
        if basis == "rswaf":  # FasterKAN's grid and denominator
            opts.update(grid_range=(-2.0, 2.0), width=0.33)
        self.norm1 = nn.LayerNorm(dim)
        self.fc1 = KANLinear(dim, hidden, basis=basis, base_act=None, **opts)
        self.norm2 = nn.LayerNorm(hidden)
        self.fc2 = KANLinear(hidden, dim, basis=basis, base_act=None, **opts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm2(self.fc1(self.norm1(x))))


class MoEFeedForward(nn.Module):
    """Top-k routed mixture of MLP experts and KAN experts over (B, N, C) tokens."""

    def __init__(
        self,
        dim: int,
        mlp_hidden: int,
        kan_hidden: int,
        num_mlp_experts: int = 4,
        num_kan_experts: int = 4,
        top_k: int = 2,
        kan_basis: str = "rswaf",
        kan_n_basis: int = 8,
        drop: float = 0.0,
        balance_loss: bool = False,
    ) -> None:
        super().__init__()
        n = num_mlp_experts + num_kan_experts
        if num_mlp_experts < 0 or num_kan_experts < 0 or n < 1:
            raise ValueError("need at least one expert and no negative expert counts")
        if not 1 <= top_k <= n:
            raise ValueError(
                f"top_k must be between 1 and the number of experts ({n}), got {top_k}"
            )
        self.top_k = top_k
        self.router = nn.Linear(dim, n, bias=False)
        experts: list[nn.Module] = [Mlp(dim, mlp_hidden, drop=drop) for _ in range(num_mlp_experts)]
        experts += [
            KANExpert(dim, kan_hidden, kan_basis, kan_n_basis) for _ in range(num_kan_experts)
        ]
        self.experts = nn.ModuleList(experts)
        self.num_mlp_experts = num_mlp_experts
        self.balance_loss = balance_loss
        self.aux_loss = torch.zeros(())

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """(..., n_experts) weights: softmax over the top-k router scores, zero elsewhere."""
        scores = self.router(x)
        top, idx = scores.topk(self.top_k, dim=-1)
        return torch.zeros_like(scores).scatter(-1, idx, top.softmax(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = self.gates(x)
        out = torch.stack([e(x) for e in self.experts], dim=-1)  # (..., C, E)
        if self.training and self.balance_loss:
            probs = self.router(x).softmax(-1).reshape(-1, gates.shape[-1])
            routed = (gates.reshape(-1, gates.shape[-1]) > 0).float().mean(0)
            self.aux_loss = gates.shape[-1] * (routed * probs.mean(0)).sum()
        return (out * gates.unsqueeze(-2)).sum(-1)


class MLPKANBlock(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, moe: dict[str, Any], drop_path: float = 0.0
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=True)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MoEFeedForward(dim, **moe)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class MLPKAN(ImageClassifier):
    """DeiT-style ViT (class token, learned positions) with MLP/KAN mixture-of-experts FFNs."""

    width_args = ("embed_dim", "expert_hidden")
    depth_args = ("depth",)
    isotropic = True  # feature_info lists every block

    def __init__(
        self,
        patch_size: int = 16,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        expert_hidden: int = 192,
        num_mlp_experts: int = 4,
        num_kan_experts: int = 4,
        top_k: int = 2,
        kan_basis: str = "rswaf",
        kan_n_basis: int = 8,
        aux_loss_weight: float = 0.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if expert_hidden < 2:
            raise ValueError(
                f"expert_hidden must be >= 2 (KAN experts use half), got {expert_hidden}"
            )
        if aux_loss_weight < 0:
            raise ValueError(f"aux_loss_weight must be >= 0, got {aux_loss_weight}")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.aux_loss_weight = aux_loss_weight
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.fixed_input_size = self.patch_embed.img_size
        self.img_size_multiple = patch_size  # the sizes its constructor accepts
        self.num_prefix_tokens = 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        moe = dict(
            mlp_hidden=expert_hidden,
            kan_hidden=expert_hidden // 2,
            num_mlp_experts=num_mlp_experts,
            num_kan_experts=num_kan_experts,
            top_k=top_k,
            kan_basis=kan_basis,
            kan_n_basis=kan_n_basis,
            balance_loss=aux_loss_weight > 0,
        )
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.Sequential(*[MLPKANBlock(embed_dim, num_heads, moe, r) for r in rates])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.num_features = embed_dim
        self.feature_info = [
            FeatureInfo(embed_dim, patch_size, f"blocks.{i}") for i in range(depth)
        ]
        self.cam_target = f"blocks.{depth - 1}.norm1"
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def aux_loss(self, targets: torch.Tensor | None = None) -> torch.Tensor | None:
        """The weighted sum of the blocks' load-balancing terms from the last training
        pass (None in eval mode or with ``aux_loss_weight=0``, the release's setting)."""
        if not (self.training and self.aux_loss_weight):
            return None
        return self.aux_loss_weight * sum((b.mlp.aux_loss for b in self.blocks), torch.zeros(()))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.norm(self.blocks(x + self.pos_embed))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)


_PAPER = "MLP-KAN: Unifying Deep Representation and Function Learning"


@register_model(ModelCard("mlp_kan", _PAPER, 2024, "kan", scale="other"))
def mlp_kan_deit_tiny(**kwargs: Any) -> MLPKAN:
    """DeiT-T layout with 4 MLP (hidden 192) + 4 FasterKAN (hidden 96) experts per block,
    top-2 routing, as the release's ``deit_tiny_patch16_224_KAN`` (19.93M parameters)."""
    return build_model(MLPKAN, {}, kwargs)


@register_model(ModelCard("mlp_kan", _PAPER, 2024, "kan", scale="cpu", img_size=32))
def mlp_kan_pico(**kwargs: Any) -> MLPKAN:
    """Patch 4, width 64, depth 4, 2 heads; 4 MLP (hidden 64) and 4 KAN (hidden 32)
    experts, top-2."""
    return build_model(
        MLPKAN,
        dict(
            patch_size=4,
            embed_dim=64,
            depth=4,
            num_heads=2,
            expert_hidden=64,
            img_size=32,
        ),
        kwargs,
    )
