"""The shape every archbench model shares.

A model subclasses :class:`ImageClassifier`, builds its layers, and sets:

- ``num_classes``, ``in_chans``, ``num_features`` (width of the pooled pre-logits),
- ``feature_info``: one :class:`FeatureInfo` (channels, reduction, module path) per stage
  for hierarchical models; isotropic models (every block at one resolution and width) list
  every block and set the class attribute ``isotropic = True``,
- ``cam_target``: module path whose output explanations hook by default,
- ``num_prefix_tokens`` for token models (class / distillation tokens),
- what input sizes it takes, only where its architecture constrains them:
  ``min_input_size`` (the smallest H and W that reach the last stage), ``input_multiple``
  (H and W must be multiples of it), or ``fixed_input_size`` (token grids fixed at build
  time: position embeddings, token-mixing layers); families with another rule override
  ``input_side_ok`` and ``input_size_rule``. A refused size names the nearest that work.

Its class declares the model schema: ``width_args``, the constructor arguments that carry
width (channel counts, embedding dims, stem and hidden widths, or a width multiplier), and
``depth_args``, those that carry depth (blocks per stage, number of layers). Multiplying
every width argument by one factor must widen every stage; matched-budget comparisons
scale them and architecture search samples them. A family with no depth argument declares
``depth_args = ()`` and says why in a comment.

It implements ``forward_features(x)`` (returns the last feature map, NCHW, or tokens
B x N x C) and ``forward_head(x, pre_logits=False)``. ``forward`` chains the two.

``forward_intermediates(x, indices=None)`` returns the outputs of the ``feature_info``
entries, in ``feature_info`` order: all of them (``None``), the last ``n`` (an int), or the
positions in a sequence (negative positions count from the end; a position out of range
is a ``ValueError``). It is implemented once, here: forward hooks on each entry's module
collect its output while ``forward_features`` runs, and the pass stops once the last
requested one has run. So each ``FeatureInfo.module`` must be a submodule that runs once
per forward pass and outputs that stage's tensor (a tuple output contributes its element
with ``num_chs`` channels). Hierarchical models give NCHW maps (a token output is folded
by ``tokens_to_map``); isotropic token models give each block's B x N x C tokens, prefix
tokens included, which ``tokens_to_map`` folds into B x C x H x W.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import index as as_index

import torch
import torch.nn as nn

from ..layers.helpers import to_2tuple

__all__ = [
    "FeatureInfo",
    "ImageClassifier",
    "check_img_size",
    "min_side_for_convs",
    "min_side_for_norms",
    "nearest_sides",
    "reject_drop_path",
    "to_2tuple",
]


class _FeaturesCollected(Exception):
    """Raised by ``forward_intermediates``' hooks to end the pass once every output is in."""


@dataclass(frozen=True)
class FeatureInfo:
    """Channels and reduction (stride from the input) of one stage's output."""

    num_chs: int
    reduction: int
    module: str


def nearest_sides(side: int, ok: Callable[[int], bool]) -> tuple[int | None, int | None]:
    """The largest side below ``side`` and the smallest above it that ``ok`` accepts.

    ``None`` where there is none (nothing below, or nothing up to ``2 * side + 4096``).
    """
    below = next((s for s in range(side - 1, 0, -1) if ok(s)), None)
    above = next((s for s in range(side + 1, 2 * side + 4097) if ok(s)), None)
    return below, above


def check_img_size(
    img_size: int | tuple[int, int], multiple: int, model: str, min_size: int | None = None
) -> tuple[int, int]:
    """Validate a constructor's ``img_size``; return it as a pair.

    Each side must be a multiple of ``multiple`` and at least ``min_size`` (by default
    ``multiple``). The error names the nearest valid sides below and above.
    """
    size = to_2tuple(img_size)
    least = max(1, multiple if min_size is None else min_size)

    def ok(side: int) -> bool:
        return side >= least and side % multiple == 0

    for side in size:
        if not ok(side):
            near = " or ".join(str(v) for v in nearest_sides(side, ok) if v is not None)
            rule = f"a multiple of {multiple} and " if multiple > 1 else ""
            raise ValueError(
                f"{model}: img_size {size} must be {rule}at least {least} on each side "
                f"(nearest valid: {near})"
            )
    return size


def min_side_for_convs(layers: Sequence[tuple[int, int, int]]) -> int:
    """Smallest input side for which a chain of (kernel, stride, padding) layers keeps every
    output at least one pixel wide."""
    side = 1
    for kernel, stride, padding in reversed(layers):
        # (x + 2 * padding - kernel) // stride + 1 >= side  <=>  x >= this
        side = max(1, (side - 1) * stride + kernel - 2 * padding)
    return side


def reject_drop_path(drop_path_rate: float, model: str, why: str = "") -> None:
    """Refuse stochastic depth in a family without residual branches, rather than ignore it."""
    if drop_path_rate:
        raise ValueError(
            f"{model} has no residual branches to drop{why}, so it has no stochastic depth: "
            f"drop_path_rate must be 0, got {drop_path_rate} (drop_rate sets its dropout)"
        )


def min_side_for_norms(stages: Sequence[tuple[nn.Module, int]]) -> int:
    """Smallest input side for which per-sample norms in ``(stage, reduction)`` pairs run.

    An instance norm, or a group norm whose groups hold one channel, needs more than one
    value per group: the stage's map must be at least 2 pixels wide, i.e. the input side
    must exceed the stage's reduction (maps of padded stride-2 layers are ceil(side / r)).
    """
    least = 1
    for stage, reduction in stages:
        for m in stage.modules():
            if isinstance(m, nn.InstanceNorm2d) or (
                isinstance(m, nn.GroupNorm) and m.num_groups == m.num_channels
            ):
                least = max(least, reduction + 1)
                break
    return least


class ImageClassifier(nn.Module):
    num_classes: int
    in_chans: int
    num_features: int
    feature_info: list[FeatureInfo]
    cam_target: str
    num_prefix_tokens: int = 0
    input_multiple: int = 1
    min_input_size: int = 1
    fixed_input_size: tuple[int, int] | None = None
    # for fixed_input_size models: constructors accept img_size sides that are multiples
    # of this, and a refusal suggests the nearest such img_size to rebuild with
    img_size_multiple: int = 1
    rebuild_note: str = ""  # appended to the rebuild suggestion (how to move weights)
    # feature_info lists every block at one resolution and width (ViT, Mixer, ConvMixer...);
    # forward_intermediates then keeps token outputs as B x N x C tokens
    isotropic: bool = False
    # the model schema (see the module docstring); every family declares its own
    width_args: tuple[str, ...] = ()
    depth_args: tuple[str, ...] = ()

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
        h, w = (int(s) for s in x.shape[-2:])
        if not (self.input_side_ok(h, 0) and self.input_side_ok(w, 1)):
            raise ValueError(self._input_size_error(h, w))

    def input_side_ok(self, side: int, axis: int = 0) -> bool:
        """Whether the model takes inputs whose height (``axis=0``) or width (1) is ``side``.

        The default applies ``fixed_input_size``, ``min_input_size`` and ``input_multiple``.
        """
        if self.fixed_input_size is not None:
            return side == tuple(self.fixed_input_size)[axis]
        return side >= self.min_input_size and side % self.input_multiple == 0

    def input_size_rule(self) -> str:
        """``input_side_ok``'s rule in words, completing "<Model> ..." in error messages."""
        if self.fixed_input_size is not None:
            fh, fw = tuple(self.fixed_input_size)
            return f"was built for img_size={(fh, fw)} and takes only {fh}x{fw} inputs"
        rules = []
        if self.input_multiple > 1:
            rules.append(f"multiples of {self.input_multiple}")
        if self.min_input_size > 1:
            rules.append(f"at least {self.min_input_size}")
        return f"needs H and W to be {' and '.join(rules)}" if rules else "takes any H and W"

    def _input_size_error(self, h: int, w: int) -> str:
        below: list[int | None] = []
        above: list[int | None] = []
        for side, axis in ((h, 0), (w, 1)):
            if self.input_side_ok(side, axis):
                below.append(side)
                above.append(side)
            else:
                lo, hi = nearest_sides(side, lambda s, a=axis: self.input_side_ok(s, a))
                below.append(hi if lo is None else lo)
                above.append(lo if hi is None else hi)
        found = [f"{p[0]}x{p[1]}" for p in (below, above) if None not in p]
        found = sorted(set(found), key=found.index)
        msg = f"{type(self).__name__} {self.input_size_rule()}, got {(h, w)}"
        if found:
            plural = "s" if len(found) > 1 else ""
            msg += f"; nearest working size{plural}: {' and '.join(found)}"
        if self.fixed_input_size is not None:
            msg += f"; {self._rebuild_hint(h, w)}"
        return msg

    def img_size_ok(self, side: int) -> bool:
        """For ``fixed_input_size`` models: whether the constructor takes this img_size side."""
        least = max(self.img_size_multiple, self.min_input_size)
        return side >= least and side % self.img_size_multiple == 0

    def _rebuild_hint(self, h: int, w: int) -> str:
        if self.img_size_ok(h) and self.img_size_ok(w):
            hint = f"rebuild with img_size={h if h == w else (h, w)} to take {h}x{w} inputs"
        else:
            side = w if self.img_size_ok(h) else h
            near = nearest_sides(side, self.img_size_ok)
            sizes = " or ".join(str(v) for v in near if v is not None)
            hint = f"it cannot be built for {side}; nearest img_size it can be built for: {sizes}"
        return f"{hint} {self.rebuild_note}".rstrip()

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

    # ----- intermediate features ---------------------------------------------------
    def forward_intermediates(
        self, x: torch.Tensor, indices: int | Sequence[int] | None = None
    ) -> list[torch.Tensor]:
        """Outputs of the ``feature_info`` entries that ``indices`` selects, in that order.

        ``indices``: ``None`` selects every entry, an int ``n`` the last ``n``, a sequence
        of ints those positions (negative ones count from the end, repeats count once).
        Hierarchical models give one NCHW map per stage; isotropic models one output per
        block (B x N x C tokens with their prefix tokens for token models). The pass stops
        after the last selected module, so state that ``forward_features`` records at its
        end (an auxiliary loss) is not updated by a call that selects early entries only.
        """
        positions = self._feature_positions(indices)
        captured: dict[int, torch.Tensor] = {}

        def capture(pos: int, _module: nn.Module, _inputs: object, output: object) -> None:
            out = self._feature_tensor(output, self.feature_info[pos])
            if out.ndim == 3 and not self.isotropic:
                out = self.tokens_to_map(out)
            captured.setdefault(pos, out)
            if len(captured) == len(positions):
                raise _FeaturesCollected

        handles = [
            self.get_submodule(self.feature_info[pos].module).register_forward_hook(
                lambda m, i, o, pos=pos: capture(pos, m, i, o)
            )
            for pos in positions
        ]
        try:
            self.forward_features(x)
        except _FeaturesCollected:
            pass
        finally:
            for handle in handles:
                handle.remove()
        missing = [self.feature_info[p].module for p in positions if p not in captured]
        if missing:
            raise RuntimeError(
                f"{type(self).__name__}: feature_info modules {missing} did not run in "
                "forward_features; point those entries at modules that do"
            )
        return [captured[p] for p in positions]

    def _feature_positions(self, indices: int | Sequence[int] | None) -> list[int]:
        """Sorted, distinct positions in ``feature_info`` that ``indices`` selects."""
        n = len(self.feature_info)
        name = type(self).__name__
        if indices is None:
            return list(range(n))
        if isinstance(indices, bool):
            raise TypeError(f"indices must be None, an int or a sequence of ints, got {indices}")
        if not isinstance(indices, Sequence):
            try:
                count = as_index(indices)
            except TypeError:
                raise TypeError(
                    f"indices must be None, an int or a sequence of ints, got {indices!r}"
                ) from None
            if not 1 <= count <= n:
                raise ValueError(
                    f"{name} has {n} feature_info entries; indices={count} must ask for "
                    f"the last 1 to {n} of them"
                )
            return list(range(n - count, n))
        positions = set()
        for i in indices:
            if isinstance(i, bool):
                raise TypeError(f"indices must hold ints, got {i!r}")
            i = as_index(i)
            if not -n <= i < n:
                raise ValueError(
                    f"{name} has {n} feature_info entries; index {i} is out of range "
                    f"(use {-n} to {n - 1})"
                )
            positions.add(i % n)
        if not positions:
            raise ValueError(f"indices selects none of the {n} feature_info entries of {name}")
        return sorted(positions)

    @staticmethod
    def _feature_tensor(output: object, info: FeatureInfo) -> torch.Tensor:
        """The tensor a ``feature_info`` module's output stands for (from a tuple: by width)."""
        if isinstance(output, torch.Tensor):
            return output
        if isinstance(output, (tuple, list)):
            for item in output:
                if isinstance(item, torch.Tensor) and item.ndim in (3, 4):
                    width = item.shape[1] if item.ndim == 4 else item.shape[-1]
                    if width == info.num_chs:
                        return item
        raise TypeError(
            f"feature_info module {info.module!r} returned {type(output).__name__} without a "
            f"(B, {info.num_chs}, H, W) map or (B, N, {info.num_chs}) tokens; point the entry "
            "at the module that outputs the stage's tensor"
        )

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

    def aux_loss(self, targets: torch.Tensor | None = None) -> torch.Tensor | None:
        """The model's auxiliary loss for its last training forward pass, weighted, or None.

        ``targets`` are the (B, num_classes) soft targets of that batch (after label
        smoothing and mixing). The classification task adds the returned value and logs
        it as ``train_aux_loss``; families with an auxiliary objective (MoE load
        balancing, hierarchical prompts) override this. One name for every such loss:
        layers that produce one hold it in an ``aux_loss`` tensor attribute.
        """
        return None

    def no_weight_decay(self) -> set[str]:
        """Names of parameters that optimizers should not decay (beyond norms and biases)."""
        return set()
