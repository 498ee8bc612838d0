"""KAN MLPs and plain MLP baselines on flattened images.

*KAN: Kolmogorov-Arnold Networks* (Liu et al., 2024) stacks KAN layers ``[n_0, ..., n_L]``;
*KAN or MLP: A Fairer Comparison* (Yu et al., 2024) compares such stacks with MLPs at
matched parameters and FLOPs. ``FlatNet`` flattens the image and runs either a KAN stack
(``layer="kan"``: every layer, the classifier included, is a ``KANLinear``) or an MLP
(``layer="mlp"``: Linear + activation, linear classifier), so both kinds share one
interface and ``hidden`` / ``basis_opts`` scale them to a matched budget.

``KANNet`` is the same KAN stack as a plain module for tabular or symbolic-regression
inputs ``(B, n_0)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import create_act
from ..layers.kan import KANLinear
from ._base import FeatureInfo, ImageClassifier, reject_drop_path, to_2tuple
from ._registry import ModelCard, build_model, register_model

__all__ = ["FlatNet", "KANNet", "MLPNet"]


class KANNet(nn.Module):
    """A stack of ``KANLinear`` layers with widths ``widths = (n_0, ..., n_L)``."""

    def __init__(
        self,
        widths: tuple[int, ...],
        basis: str = "bspline",
        basis_opts: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"widths needs at least an input and an output width, got {widths}")
        opts = dict(basis_opts or {})
        self.layers = nn.ModuleList(
            KANLinear(a, b, basis=basis, **opts) for a, b in zip(widths[:-1], widths[1:])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MLPNet(nn.Module):
    """Linear + activation for every hidden width, then a linear output layer."""

    def __init__(self, widths: tuple[int, ...], act: str = "gelu") -> None:
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"widths needs at least an input and an output width, got {widths}")
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(create_act(act))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


_LAYERS = ("kan", "mlp")


class FlatNet(ImageClassifier):
    """Flatten the image, then a KAN or MLP trunk of ``hidden`` widths and a classifier.

    The trunk's output is exposed as a ``(B, D, 1, 1)`` map (module ``to_map``) so that
    flattened models keep the feature-map contract; its reduction is the image size.
    """

    # scaled together by matched-budget comparisons (archbench.bench.budget)
    width_args = ("hidden",)
    # no separate depth argument: the length of hidden is the depth
    depth_args = ()

    def __init__(
        self,
        hidden: tuple[int, ...] = (32,),
        layer: str = "kan",
        basis: str = "bspline",
        basis_opts: dict[str, Any] | None = None,
        act: str = "gelu",
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 32,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        reject_drop_path(drop_path_rate, "KANMLP")
        if layer not in _LAYERS:
            raise ValueError(f"layer must be one of {_LAYERS}, got {layer!r}")
        if not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"hidden must list at least one positive width, got {hidden}")
        size = to_2tuple(img_size)
        self.fixed_input_size = size
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.layer_type = layer
        self.basis = basis
        self.basis_opts = dict(basis_opts or {})
        in_dim = in_chans * size[0] * size[1]
        widths = (in_dim, *hidden)
        if layer == "kan":
            self.trunk: nn.Module = KANNet(widths, basis, self.basis_opts)
        else:
            self.trunk = nn.Sequential(MLPNet(widths, act), create_act(act))
        self.num_features = hidden[-1]
        self.to_map = nn.Unflatten(1, (hidden[-1], 1, 1))
        self.head_drop = nn.Dropout(drop_rate)
        self.reset_classifier(num_classes)
        self.feature_info = [FeatureInfo(hidden[-1], max(size), "to_map")]
        self.cam_target = "to_map"

    def reset_classifier(self, num_classes: int) -> None:
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        if num_classes == 0:
            self.head: nn.Module = nn.Identity()
        elif self.layer_type == "kan":
            self.head = KANLinear(
                self.num_features, num_classes, basis=self.basis, **self.basis_opts
            )
        else:
            self.head = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.to_map(self.trunk(x.flatten(1)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x.flatten(1))
        return x if pre_logits else self.head(x)


_KAN = "KAN: Kolmogorov-Arnold Networks"
_FAIR = "KAN or MLP: A Fairer Comparison"


@register_model(
    ModelCard(
        "kan_mlp",
        _KAN,
        2024,
        "kan",
        scale="cpu",
        img_size=32,
        notes="3072-32-classes B-spline KAN (grid 5, order 3), 0.89M parameters at 10 classes",
    )
)
def kan_mlp_pico(**kwargs: Any) -> FlatNet:
    return build_model(
        FlatNet, dict(hidden=(32,), layer="kan", basis="bspline", img_size=32), kwargs
    )


@register_model(
    ModelCard(
        "kan_mlp",
        _KAN,
        2024,
        "kan",
        scale="cpu",
        img_size=32,
        notes="3072-32-32-classes Chebyshev KAN (degree 3): a second basis at a similar budget",
    )
)
def kan_mlp_cheby_pico(**kwargs: Any) -> FlatNet:
    return build_model(
        FlatNet,
        dict(
            hidden=(64, 32), layer="kan", basis="chebyshev", basis_opts={"degree": 3}, img_size=32
        ),
        kwargs,
    )


@register_model(
    ModelCard(
        "mlp_baseline",
        _FAIR,
        2024,
        "mlp",
        scale="cpu",
        img_size=32,
        notes="3072-288-classes GELU MLP, parameter-matched to kan_mlp_pico (0.89M at 10 classes)",
    )
)
def mlp_pico(**kwargs: Any) -> FlatNet:
    return build_model(FlatNet, dict(hidden=(288,), layer="mlp", img_size=32), kwargs)
