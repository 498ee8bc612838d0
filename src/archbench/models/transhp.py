"""TransHP (*TransHP: Image Classification with Hierarchical Prompting*, 2023).

A DeiT-style ViT that, at intermediate blocks, appends one learnable prompt token per
coarse (ancestor) class of a level of the class hierarchy. The prompting block processes
patches, class token and prompts together; each prompt's output is scored by its own
classifier vector, giving coarse-class logits that are trained with the coarse labels.
Because the scores are learned through the same attention, the class token absorbs
mostly the prompt of the predicted coarse class: that is how the coarse prediction is
injected on the fly. The prompts are dropped after the block.

Levels, blocks and loss weights follow the official release (``models.py`` and
``losses.py`` of WangWenhao0716/TransHP): eleven levels of the ImageNet (WordNet)
hierarchy with 2, 2, 2, 4, 9, 16, 25, 49, 90, 170 and 406 coarse classes, injected at
blocks 0-10 (every block but the last), each with one extra prompt that stands for "no
ancestor at this level"; the prompt losses are weighted 0.1 (levels 0-4), 0.15 (5-8)
and 1 (9-10), the fine-class loss 1.

The class hierarchy is an explicit argument, never invented: ``hierarchy`` gives, for
each level (coarsest first), the coarse class of every fine class, or -1 where the fine
class has no ancestor at that level (it then targets the level's extra prompt, as in the
release's ``hi_label_idx.csv``). :func:`hierarchy_from_parents` builds those levels from
a class -> parent mapping (a tree). Without a hierarchy the model still builds (with
``num_coarse`` prompts per level, the release's by default, so that it can load weights
and run inference), but it refuses to train: ``aux_loss`` raises a ``ValueError``.
``prompt_blocks`` defaults to the last blocks before the final one (blocks 0-10 of 12
for eleven levels, as in the release) and ``prompt_loss_weights`` to the release's
weights of the finest levels (padded with 0.1 for hierarchies deeper than eleven).

Training: after ``forward`` the model holds ``coarse_logits`` (one (B, M+1) tensor per
level); ``aux_loss(soft_targets)`` (which the classification task adds) sums the levels'
weighted cross-entropies against coarse soft targets (the sum of each coarse class's
fine soft targets, so label smoothing and Mixup carry over); ``prompt_loss(labels)`` is
the same with hard labels. The prompt classifiers learn only from that loss; the forward
adds their logits to the features with weight zero so that they stay in the output's
autograd graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import PatchEmbed, TransformerBlock, drop_path_rates
from ..layers.helpers import init_trunc_normal_linear
from ..layers.pos_embed import resample_pos_embed
from ._base import FeatureInfo, ImageClassifier, check_img_size
from ._registry import ModelCard, build_model, register_model

__all__ = ["RELEASE_LEVELS", "RELEASE_LOSS_WEIGHTS", "TransHP", "hierarchy_from_parents"]

# the release's ImageNet levels (coarse classes per level, coarsest first) and weights
RELEASE_LEVELS = (2, 2, 2, 4, 9, 16, 25, 49, 90, 170, 406)
RELEASE_LOSS_WEIGHTS = (0.1, 0.1, 0.1, 0.1, 0.1, 0.15, 0.15, 0.15, 0.15, 1.0, 1.0)


def hierarchy_from_parents(
    parents: Mapping[int, int | None], num_classes: int
) -> tuple[tuple[int, ...], ...]:
    """Levels of coarse classes from a tree given as ``node -> parent`` (None: root).

    Fine classes are the nodes ``0..num_classes-1``; every other node is a coarse class.
    Level ``d`` (coarsest first) holds the ancestors at depth ``d + 1`` below the root(s)
    (a single root is one class for everything, so it is not a level), numbered in
    increasing node order; a fine class without an ancestor at that depth gets -1.
    """
    for c in range(num_classes):
        if c not in parents:
            raise ValueError(f"fine class {c} has no entry in parents (give None for a root)")

    def chain(node: int) -> list[int]:  # ancestors of node, root first
        out, seen = [], {node}
        p = parents.get(node)
        while p is not None:
            if p in seen:
                raise ValueError(f"parents has a cycle through node {p}")
            if 0 <= p < num_classes:
                raise ValueError(f"fine class {p} cannot be a parent (node {node})")
            seen.add(p)
            out.append(p)
            p = parents.get(p)
        return out[::-1]

    chains = [chain(c) for c in range(num_classes)]
    depth = max((len(ch) for ch in chains), default=0)
    single_root = len({ch[0] for ch in chains if ch}) == 1
    first = 1 if single_root else 0
    levels = []
    for d in range(first, depth):
        nodes = sorted({ch[d] for ch in chains if len(ch) > d})
        index = {n: i for i, n in enumerate(nodes)}
        levels.append(tuple(index[ch[d]] if len(ch) > d else -1 for ch in chains))
    if not levels:
        raise ValueError("parents gives no coarse level: every fine class needs an ancestor")
    return tuple(levels)


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
        num_coarse: tuple[int, ...] = RELEASE_LEVELS,
        prompt_blocks: tuple[int, ...] | None = None,
        prompt_loss_weights: tuple[float, ...] | None = None,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        size = check_img_size(img_size, patch_size, "TransHP")
        if hierarchy is not None:
            hierarchy = tuple(tuple(int(c) for c in level) for level in hierarchy)
            if not hierarchy:
                raise ValueError("hierarchy needs at least one level")
            for level in hierarchy:
                if len(level) != num_classes or min(level) < -1:
                    raise ValueError(
                        "each hierarchy level must give a coarse class (or -1: no ancestor) "
                        f"for each of the {num_classes} fine classes"
                    )
                if max(level) < 0:
                    raise ValueError("a hierarchy level must name at least one coarse class")
            num_coarse = tuple(max(level) + 1 for level in hierarchy)
        n_levels = len(num_coarse)
        if n_levels < 1 or min(num_coarse) < 1:
            raise ValueError(f"num_coarse needs positive class counts, got {num_coarse}")
        if n_levels > depth - 1:
            raise ValueError(f"{n_levels} prompting levels need depth >= {n_levels + 1}")
        if prompt_blocks is None:  # the release: the last blocks before the final one
            prompt_blocks = tuple(range(depth - 1 - n_levels, depth - 1))
        if len(prompt_blocks) != n_levels:
            raise ValueError(
                f"{n_levels} prompting levels but prompt_blocks names {len(prompt_blocks)} "
                "blocks; give one block per level"
            )
        if any(not 0 <= b < depth - 1 for b in prompt_blocks):
            raise ValueError(f"prompt_blocks must lie in [0, {depth - 2}], got {prompt_blocks}")
        if len(set(prompt_blocks)) != len(prompt_blocks):
            raise ValueError(f"prompt_blocks must be distinct, got {prompt_blocks}")
        if prompt_loss_weights is None:
            pad = max(0, n_levels - len(RELEASE_LOSS_WEIGHTS))
            prompt_loss_weights = ((0.1,) * pad + RELEASE_LOSS_WEIGHTS)[-n_levels:]
        if len(prompt_loss_weights) != n_levels or any(not w >= 0 for w in prompt_loss_weights):
            raise ValueError(
                f"prompt_loss_weights needs {n_levels} non-negative weights, got "
                f"{prompt_loss_weights}"
            )
        self.num_classes, self.in_chans = num_classes, in_chans
        self.fixed_input_size = size
        self.img_size_multiple = patch_size  # the sizes its constructor accepts
        self.num_prefix_tokens = 1
        self.num_coarse = tuple(num_coarse)
        self.prompt_blocks = tuple(prompt_blocks)
        self.prompt_loss_weights = tuple(float(w) for w in prompt_loss_weights)
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
        """Store each level as a fine -> coarse index buffer (-1 -> the extra prompt)."""
        self.has_hierarchy = hierarchy is not None
        for i, m in enumerate(self.num_coarse):
            if hierarchy is None:
                level = torch.full((max(self.num_classes, 1),), -1, dtype=torch.long)
            else:
                level = torch.tensor(hierarchy[i], dtype=torch.long)
            level = torch.where(level < 0, torch.full_like(level, m), level)
            self.register_buffer(f"coarse_of_fine_{i}", level, persistent=False)

    def reset_classifier(self, num_classes: int) -> None:
        super().reset_classifier(num_classes)
        old = getattr(self, "coarse_of_fine_0", None)
        if old is None or old.numel() != num_classes:  # the hierarchy was for other classes
            self._set_hierarchy(None)

    def set_hierarchy(self, hierarchy: tuple[tuple[int, ...], ...]) -> None:
        """Give the model the class hierarchy of its (new) fine classes, one level per
        prompting level, each with at most as many coarse classes as the level's prompts."""
        if len(hierarchy) != len(self.num_coarse):
            raise ValueError(
                f"the model has {len(self.num_coarse)} prompting levels; the hierarchy gives "
                f"{len(hierarchy)}"
            )
        for level, m in zip(hierarchy, self.num_coarse):
            if len(level) != self.num_classes or min(level) < -1 or max(level) >= m:
                raise ValueError(
                    f"each level must map the {self.num_classes} fine classes to a coarse "
                    f"class in [0, {m - 1}] (or -1), one level per prompting level"
                )
        self._set_hierarchy(tuple(tuple(int(c) for c in level) for level in hierarchy))

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

    def _require_hierarchy(self) -> None:
        if not self.has_hierarchy:
            raise ValueError(
                "TransHP trains its prompts on a class hierarchy and was built without one: "
                "pass hierarchy=(level, ...) (coarse class of each fine class per level, "
                "e.g. from hierarchy_from_parents) or call set_hierarchy() before training"
            )

    def _weighted(self, losses: list[torch.Tensor]) -> torch.Tensor:
        weights = torch.tensor(self.prompt_loss_weights, device=losses[0].device)
        return (weights * torch.stack(losses)).sum()

    def prompt_loss(self, targets: torch.Tensor) -> torch.Tensor:
        """Weighted cross-entropy of the last forward's coarse logits against the coarse
        labels of the (B,) fine labels ``targets``."""
        self._require_hierarchy()
        if not self.coarse_logits:
            raise RuntimeError("call the model on a batch before prompt_loss()")
        losses = [
            F.cross_entropy(logits.float(), coarse)
            for logits, coarse in zip(self.coarse_logits, self.coarse_targets(targets))
        ]
        return self._weighted(losses)

    def aux_loss(self, targets: torch.Tensor | None = None) -> torch.Tensor | None:
        """The prompt loss for the training task, from (B, num_classes) soft targets.

        A coarse class's soft target is the sum of its fine classes' (so label smoothing
        and Mixup/CutMix carry over to the coarse levels); fine classes without an
        ancestor at a level count for its extra prompt. Refuses to train without a
        hierarchy.
        """
        if not self.training or not self.coarse_logits:
            return None
        self._require_hierarchy()
        if targets is None or targets.dim() != 2 or targets.shape[1] != self.num_classes:
            got = None if targets is None else tuple(targets.shape)
            raise ValueError(
                f"TransHP.aux_loss needs (B, {self.num_classes}) soft targets, got {got}"
            )
        losses = []
        for i, logits in enumerate(self.coarse_logits):
            fine_to_coarse = getattr(self, f"coarse_of_fine_{i}")
            coarse = targets.new_zeros(targets.shape[0], logits.shape[-1])
            coarse.index_add_(1, fine_to_coarse, targets)
            losses.append(F.cross_entropy(logits.float(), coarse.float()))
        return self._weighted(losses)

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
    "DeiT backbone (DeiT paper: S 22.05M, B 86.57M) plus the official release's 786 "
    "prompts and 786 prompt classifiers: eleven levels of 2-406 coarse classes (+1 each) "
    "at blocks 0-10 (WangWenhao0716/TransHP models.py)"
)


@register_model(
    ModelCard(
        "transhp",
        _PAPER,
        2023,
        "vit",
        params_m=87.78,
        source=_SRC,
        notes="ViT-B/16 with the release's eleven prompting levels; paper: +2.83 top-1 over "
        "ViT-B/16; needs the ImageNet hierarchy (hierarchy=...) to train",
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
        params_m=22.65,
        top1=78.65,
        source=_SRC + "; top-1 of TransHP on DeiT-S (paper)",
        notes="DeiT-S/16 with the release's eleven prompting levels; needs the ImageNet "
        "hierarchy (hierarchy=...) to train",
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
        notes="patch 4 (8x8 grid), width 96, depth 6; two levels of 2 and 5 coarse "
        "classes at blocks 3 and 4 (pass hierarchy=... to train)",
    )
)
def transhp_pico(**kwargs: Any) -> TransHP:
    defaults = dict(
        embed_dim=96,
        depth=6,
        num_heads=3,
        patch_size=4,
        num_coarse=(2, 5),
        img_size=32,
    )
    return build_model(TransHP, defaults, kwargs)
