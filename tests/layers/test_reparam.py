"""Reparameterization helpers: each identity holds numerically."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from archbench.layers.reparam import (
    dilated_to_dense,
    fuse_conv_bn,
    identity_kernel,
    pad_kernel,
    reparameterize_model,
)


def _random_bn(c: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return bn.eval()


@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("with_bias", [False, True])
def test_fuse_conv_bn_matches_conv_then_bn(groups, with_bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=groups, bias=with_bias)
    bn = _random_bn(8)
    x = torch.randn(2, 8, 7, 7)
    w, b = fuse_conv_bn(conv.weight, bn, conv.bias)
    fused = F.conv2d(x, w, b, padding=1, groups=groups)
    assert torch.allclose(fused, bn(conv(x)), atol=1e-5)


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_identity_kernel_and_bn_only_branch(groups):
    x = torch.randn(2, 8, 5, 5)
    k = identity_kernel(8, 3, groups)
    assert k.shape == (8, 8 // groups, 3, 3)
    assert torch.equal(F.conv2d(x, k, padding=1, groups=groups), x)
    bn = _random_bn(8)
    w, b = fuse_conv_bn(None, bn, identity_groups=groups, identity_size=3)
    assert torch.allclose(F.conv2d(x, w, b, padding=1, groups=groups), bn(x), atol=1e-5)


def test_pad_kernel_keeps_same_padding_output():
    x = torch.randn(1, 4, 9, 9)
    k = torch.randn(4, 1, 3, 3)
    big = pad_kernel(k, 7)
    assert big.shape == (4, 1, 7, 7)
    assert torch.allclose(
        F.conv2d(x, k, padding=1, groups=4), F.conv2d(x, big, padding=3, groups=4), atol=1e-5
    )
    asym = pad_kernel(torch.randn(4, 1, 1, 5), (5, 5))
    assert asym.shape == (4, 1, 5, 5)
    with pytest.raises(ValueError, match="even"):
        pad_kernel(k, 6)


@pytest.mark.parametrize("k,d", [(3, 2), (5, 3), (3, 7)])
def test_dilated_to_dense_equals_dilated_conv(k, d):
    x = torch.randn(1, 3, 21, 21)
    w = torch.randn(3, 1, k, k)
    dense = dilated_to_dense(w, d)
    assert dense.shape[-1] == (k - 1) * d + 1
    pad = (k - 1) * d // 2
    ref = F.conv2d(x, w, padding=pad, dilation=d, groups=3)
    assert torch.allclose(F.conv2d(x, dense, padding=pad, groups=3), ref, atol=1e-5)
    assert torch.equal(dilated_to_dense(w, 1), w)
    with pytest.raises(ValueError):
        dilated_to_dense(w, 0)


def test_reparameterize_model_calls_innermost_first():
    order: list[str] = []

    class Leaf(nn.Module):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def reparameterize(self) -> None:
            order.append(self.name)

    outer = Leaf("outer")
    outer.inner = Leaf("inner")
    root = nn.Sequential(outer).train()
    reparameterize_model(root)
    assert order == ["inner", "outer"]
    assert not root.training
