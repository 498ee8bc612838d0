"""The shape every archbench model shares.

A model subclasses :class:`ImageClassifier`, builds its layers, and sets:

- ``num_classes``, ``in_chans``, ``num_features`` (width of the pooled pre-logits),
- ``feature_info``: one :class:`FeatureInfo` per stage (channels, reduction, module path),
- ``cam_target``: module path whose output explanations hook by default,
- ``num_prefix_tokens`` for token models (class / distillation tokens),
- ``input_multiple`` (H and W must be multiples of it) or ``fixed_input_size``.

It implements ``forward_features(x)`` (returns the last feature map, NCHW, or tokens
B x N x C) and ``forward_head(x, pre_logits=False)``. ``forward`` chains the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..layers.helpers import to_2tuple

__all__ = ["FeatureInfo", "ImageClassifier", "check_img_size", "to_2tuple"]


@dataclass(frozen=True)
class FeatureInfo:
    """Channels and reduction (stride from the input) of one stage's output."""

    num_chs: int
    reduction: int
    module: str


def check_img_size(img_size: int | tuple[int, int], multiple: int, model: str) -> tuple[int, int]:
    """Validate that ``img_size`` tiles into ``multiple``-sized cells; return it as a pair."""
    size = to_2tuple(img_size)
    if min(size) <= 0 or any(s % multiple for s in size):
        valid = ", ".join(str(multiple * k) for k in (1, 2, 4, 7, 14))
        raise ValueError(
            f"{model}: img_size {size} must be a positive multiple of {multiple} "
            f"(for example {valid})"
        )
    return size


class ImageClassifier(nn.Module):
    num_classes: int
    in_chans: int
    num_features: int
    feature_info: list[FeatureInfo]
    cam_target: str
    num_prefix_tokens: int = 0
    input_multiple: int = 1
    fixed_input_size: tuple[int, int] | None = None

    # ----- input validation --------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        """Fail with a clear message on a tensor this model cannot take."""
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(f"{name} expects a 4-D batch (B, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"{name} was built for in_chans={self.in_chans} but got {x.shape[1]} channels "
                f"(input shape {tuple(x.shape)}); rebuild with in_chans={x.shape[1]} or convert the images"
            )
        h, w = x.shape[-2:]
        if self.fixed_input_size is not None and (h, w) != tuple(self.fixed_input_size):
            raise ValueError(
                f"{name} was built for img_size={tuple(self.fixed_input_size)} but got {(h, w)}; "
                f"rebuild with img_size={h if h == w else (h, w)}"
            )
        m = self.input_multiple
        if m > 1 and (h % m or w % m):
            raise ValueError(f"{name} needs H and W to be multiples of {m}, got {(h, w)}")

    # ----- forward -----------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Default head: global average pool of the NCHW map, ``self.head_drop``, ``self.head``.

        Token models and families with another head override this.
        """
        if x.ndim != 4:
            raise NotImplementedError(
                f"{type(self).__name__} must define forward_head for {x.ndim}-D features"
            )
        x = x.mean((2, 3))
        drop = getattr(self, "head_drop", None)
        if drop is not None:
            x = drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # ----- head --------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (0 removes it)."""
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    # ----- tokens and maps ---------------------------------------------------------
    def tokens_to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """Turn B x N x C tokens (prefix tokens first) into a B x C x H x W map.

        The default assumes a square grid; models with other grids override this.
        """
        if tokens.ndim == 4:
            return tokens
        if tokens.ndim != 3:
            raise ValueError(f"expected tokens of shape (B, N, C), got {tuple(tokens.shape)}")
        spatial = tokens[:, self.num_prefix_tokens :]
        n = spatial.shape[1]
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(
                f"{type(self).__name__}: {n} spatial tokens do not form a square grid; "
                "override tokens_to_map for this model"
            )
        return spatial.transpose(1, 2).reshape(spatial.shape[0], spatial.shape[2], side, side)

    def extra_loss(self, targets: torch.Tensor) -> torch.Tensor | None:
        """A loss the model adds to the task loss for its last forward pass, or None.

        ``targets`` are the (B, num_classes) soft targets of that batch (after label
        smoothing and mixing). The training engine adds the returned value; families with
        an auxiliary objective (MoE load balancing, hierarchical prompts) override this.
        """
        return None

    def no_weight_decay(self) -> set[str]:
        """Names of parameters that optimizers should not decay (beyond norms and biases)."""
        return set()
