"""Feed-forward blocks."""

from __future__ import annotations

import torch
import torch.nn as nn

from .act import create_act

__all__ = ["ConvMlp", "Mlp", "MlpHead"]


class Mlp(nn.Module):
    """Linear -> act -> dropout -> Linear -> dropout, on the last dimension."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act: str = "gelu",
        bias: bool = True,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = create_act(act)
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class MlpHead(nn.Module):
    """Classifier head on pooled features: Linear(dim, ratio * dim) -> act -> LayerNorm ->
    dropout -> Linear(classes).

    The MLP head of *MetaFormer Baselines for Vision* (SquaredReLU, LayerNorm eps 1e-5),
    also used by InceptionNeXt and MambaOut (GELU, eps 1e-6).
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        act: str = "gelu",
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = create_act(act)
        self.norm = nn.LayerNorm(hidden, eps=norm_eps)
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.norm(self.act(self.fc1(x)))))


class ConvMlp(nn.Module):
    """The same MLP as 1x1 convolutions on an NCHW tensor."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act: str = "gelu",
        bias: bool = True,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Conv2d(in_features, hidden_features, 1, bias=bias)
        self.act = create_act(act)
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Conv2d(hidden_features, out_features, 1, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
