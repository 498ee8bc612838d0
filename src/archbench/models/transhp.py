"""TransHP (*TransHP: Image Classification with Hierarchical Prompting*, 2023).

A DeiT-style ViT that, at an intermediate block, appends one learnable prompt token per
coarse (ancestor) class. The prompting block processes patches, class token and
prompts together; each prompt's output is scored by its own classifier vector, giving
coarse-class logits that are trained with the coarse labels. Because the scores are
learned through the same attention, the class token absorbs mostly the prompt of the
predicted coarse class: that is how the coarse prediction is injected on the fly. The
prompts are dropped after the block and the rest of the network is a plain ViT.

The class hierarchy is a constructor argument: ``hierarchy`` gives, for each prompting
level, the coarse class of every fine class (a tuple of ``num_classes`` ints), and
``prompt_blocks`` the block at which each level is injected. Without a hierarchy, fine
classes are grouped into ``num_coarse`` contiguous, equal-sized coarse classes (the
default for ImageNet-sized heads is the release's 406-class WordNet level at block 10,
but the WordNet mapping itself is data and must be passed in; archbench ships none).
As in the official release each level has one extra prompt beyond its coarse classes.

Training: after ``forward`` the model holds ``coarse_logits`` (one (B, M+1) tensor per
level); ``prompt_loss(targets)`` turns fine targets into coarse ones and returns the
summed cross-entropy, weighted by ``prompt_loss_weight``, to add to the task loss.
The prompt classifiers learn only from that loss; the forward adds their logits to the
features with weight zero so that they stay in the output's autograd graph.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import PatchEmbed, TransformerBlock, drop_path_rates
from ..layers.helpers import init_trunc_normal_linear
from ..layers.pos_embed import resample_pos_embed
from ._base import FeatureInfo, ImageClassifier, check_img_size
from ._registry import ModelCard, build_model, register_model

__all__ = ["TransHP", "default_hierarchy"]


def default_hierarchy(num_classes: int, num_coarse: int) -> tuple[int, ...]:
    """Contiguous equal-sized grouping: fine class c belongs to coarse c * M // N."""
    return tuple(c * num_coarse // num_classes for c in range(num_classes))


class TransHP(ImageClassifier):
    """ViT with coarse-class prompt tokens injected at intermediate blocks."""

    width_args = ("embed_dim",)
    depth_args = ("depth",)
    isotropic = True  # feature_info lists every block

    def __init__(
        self,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        patch_size: int = 16,
        hierarchy: tuple[tuple[int, ...], ...] | None = None,
        num_coarse: tuple[int, ...] = (406,),
        prompt_blocks: tuple[int, ...] = (10,),
        prompt_loss_weight: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        size = check_img_size(img_size, patch_size, "TransHP")
        if hierarchy is not None:
            if len(hierarchy) != len(prompt_blocks):
                raise ValueError(
                    f"hierarchy has {len(hierarchy)} levels but prompt_blocks names "
                    f"{len(prompt_blocks)} blocks; give one block per level"
                )
            for level in hierarchy:
                if len(level) != num_classes or min(level) < 0:
                    raise ValueError(
                        "each hierarchy level must give a non-negative coarse class for "
                        f"each of the {num_classes} fine classes"
                    )
            num_coarse = tuple(max(level) + 1 for level in hierarchy)
        elif len(num_coarse) != len(prompt_blocks):
            raise ValueError("num_coarse and prompt_blocks need one entry per prompting level")
        if any(not 0 <= b < depth - 1 for b in prompt_blocks):
            raise ValueError(f"prompt_blocks must lie in [0, {depth - 2}], got {prompt_blocks}")
        if len(set(prompt_blocks)) != len(prompt_blocks):
            raise ValueError(f"prompt_blocks must be distinct, got {prompt_blocks}")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.fixed_input_size = size
        self.img_size_multiple = patch_size  # the sizes its constructor accepts
        self.num_prefix_tokens = 1
        self.num_coarse = tuple(num_coarse)
        self.prompt_blocks = tuple(prompt_blocks)
        self.prompt_loss_weight = prompt_loss_weight
        self.patch_embed = PatchEmbed(size, patch_size, in_chans, embed_dim)
        self.grid_size = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = drop_path_rates(drop_path_rate, [depth])[0]
        self.blocks = nn.Sequential(
            *(
                TransformerBlock(embed_dim, num_heads, mlp_ratio, True, drop_rate, 0.0, dpr[i])
                for i in range(depth)
            )
        )
        # one prompt (and one prompt classifier vector) per coarse class, plus one extra
        self.prompts = nn.ParameterList(
            nn.Parameter(torch.zeros(m + 1, embed_dim)) for m in self.num_coarse
        )
        self.prompt_classifiers = nn.ParameterList(
            nn.Parameter(torch.zeros(m + 1, embed_dim)) for m in self.num_coarse
        )
        self._set_hierarchy(hierarchy)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.num_features = embed_dim
        # a prompting block's output also carries its prompts, which are split off after
        # it: an identity per block marks the tokens that go on, for feature_info
        self.block_outputs = nn.ModuleList(nn.Identity() for _ in range(depth))
        self.feature_info = [
            FeatureInfo(embed_dim, patch_size, f"block_outputs.{i}") for i in range(depth)
        ]
        # the last block's first norm: its positions still mix into the class token
        self.cam_target = f"blocks.{depth - 1}.norm1"
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes else nn.Identity()
        self.coarse_logits: list[torch.Tensor] = []
        for p in (self.pos_embed, self.cls_token, *self.prompts, *self.prompt_classifiers):
            nn.init.trunc_normal_(p, std=0.02)
        self.apply(self._init_weights)

    _init_weights = staticmethod(init_trunc_normal_linear)

    def _set_hierarchy(self, hierarchy: tuple[tuple[int, ...], ...] | None) -> None:
        n = max(self.num_classes, 1)
        levels = hierarchy or tuple(default_hierarchy(n, m) for m in self.num_coarse)
        for i, level in enumerate(levels):
            self.register_buffer(
                f"coarse_of_fine_{i}", torch.tensor(level, dtype=torch.long), persistent=False
            )

    def reset_classifier(self, num_classes: int) -> None:
        super().reset_classifier(num_classes)
        old = getattr(self, "coarse_of_fine_0", None)
        if old is None or old.numel() != num_classes:  # regroup the new fine classes
            self._set_hierarchy(None)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    @staticmethod
    def resize_pos_embed(
        pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]
    ) -> torch.Tensor:
        """Resample a (1, 1 + H*W, C) position embedding; the class-token row is kept."""
        return resample_pos_embed(
            pos_embed, new_grid, old_grid, num_prefix_tokens=1, antialias=False
        )

    def load_pos_embed_from(self, pos_embed: torch.Tensor, old_grid: tuple[int, int]) -> None:
        """Copy a position embedding trained on another grid, resampled to this model's."""
        with torch.no_grad():
            self.pos_embed.copy_(self.resize_pos_embed(pos_embed, old_grid, self.grid_size))

    def coarse_targets(self, targets: torch.Tensor) -> list[torch.Tensor]:
        """Coarse label of each fine target, one tensor per prompting level."""
        return [getattr(self, f"coarse_of_fine_{i}")[targets] for i in range(len(self.num_coarse))]

    def prompt_loss(self, targets: torch.Tensor) -> torch.Tensor:
        """Weighted cross-entropy of the last forward's coarse logits against coarse targets."""
        if not self.coarse_logits:
            raise RuntimeError("call the model on a batch before prompt_loss()")
        losses = [
            F.cross_entropy(logits, coarse)
            for logits, coarse in zip(self.coarse_logits, self.coarse_targets(targets))
        ]
        return self.prompt_loss_weight * torch.stack(losses).sum()

    def aux_loss(self, targets: torch.Tensor | None = None) -> torch.Tensor | None:
        """The prompt loss for the training task, from (B, num_classes) soft targets.

        A coarse class's soft target is the sum of its fine classes' (so label smoothing
        and Mixup/CutMix carry over to the coarse levels).
        """
        if not self.training or not self.coarse_logits:
            return None
        losses = []
        for i, logits in enumerate(self.coarse_logits):
            fine_to_coarse = getattr(self, f"coarse_of_fine_{i}")
            coarse = targets.new_zeros(targets.shape[0], logits.shape[-1])
            coarse.index_add_(1, fine_to_coarse, targets)
            losses.append(F.cross_entropy(logits, coarse))
        return self.prompt_loss_weight * torch.stack(losses).sum()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        b = x.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), self.patch_embed(x)], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        n = x.shape[1]
        level_of = {blk: i for i, blk in enumerate(self.prompt_blocks)}
        coarse = []
        for i, block in enumerate(self.blocks):
            if i in level_of:
                lvl = level_of[i]
                prompts = self.prompts[lvl].unsqueeze(0).expand(b, -1, -1)
                out = block(torch.cat([x, prompts], dim=1))
                x, prompt_out = out[:, :n], out[:, n:]
                # each prompt scored by its own classifier vector
                coarse.append((prompt_out * self.prompt_classifiers[lvl]).sum(dim=-1))
            else:
                x = block(x)
            x = self.block_outputs[i](x)
        self.coarse_logits = coarse
        # the prompt classifiers learn only from prompt_loss(); a zero-weighted term keeps
        # them in the output's autograd graph (every parameter then gets a gradient, and
        # data-parallel wrappers see no unused parameters)
        x = x + 0.0 * sum(c.sum() for c in coarse)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)


_PAPER = "TransHP: Image Classification with Hierarchical Prompting"
_SRC = (
    "DeiT backbone (DeiT paper: S 22.05M, B 86.57M) plus the official release's "
    "407 prompts and 407 prompt classifiers at block 10 (WangWenhao0716/TransHP models.py)"
)


@register_model(
    ModelCard(
        "transhp",
        _PAPER,
        2023,
        "vit",
        params_m=87.19,
        source=_SRC,
        notes="ViT-B/16 with the 406-class coarse level at block 10; paper: +2.83 top-1 over ViT-B/16",
    )
)
def transhp_base(**kwargs: Any) -> TransHP:
    return build_model(TransHP, {}, kwargs)


@register_model(
    ModelCard(
        "transhp",
        _PAPER,
        2023,
        "vit",
        params_m=22.36,
        source=_SRC,
        notes="DeiT-S/16 with the 406-class coarse level at block 10",
    )
)
def transhp_small(**kwargs: Any) -> TransHP:
    return build_model(TransHP, dict(embed_dim=384, num_heads=6), kwargs)


@register_model(
    ModelCard(
        "transhp",
        _PAPER,
        2023,
        "vit",
        scale="cpu",
        img_size=32,
        notes="patch 4 (8x8 grid), width 96, depth 6; 5 coarse prompts at block 3",
    )
)
def transhp_pico(**kwargs: Any) -> TransHP:
    defaults = dict(
        embed_dim=96,
        depth=6,
        num_heads=3,
        patch_size=4,
        num_coarse=(5,),
        prompt_blocks=(3,),
        img_size=32,
    )
    return build_model(TransHP, defaults, kwargs)
