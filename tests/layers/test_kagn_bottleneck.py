"""Bottleneck KAN convolution against torch-conv-kan's KAGN bottleneck, written out."""

import torch
import torch.nn.functional as F

from archbench.layers.kan import BottleneckKANConv2d
from archbench.layers.kan_basis import GramBasis


def _kagn_gram(t: torch.Tensor, w: torch.Tensor, degree: int) -> list[torch.Tensor]:
    """KAGN's recurrence: p_i = t p_{i-1} - beta(i-1, i) p_{i-2} with
    beta(n, m) = ((m + n)(m - n) n^2) / (m^2 / (4 n^2 - 1)) * w[n]."""
    p = [torch.ones_like(t), t]
    for i in range(2, degree + 1):
        n, m = i - 1, i
        beta = ((m + n) * (m - n) * n**2) / (m**2 / (4.0 * n**2 - 1.0)) * w[n]
        p.append(t * p[-1] - beta * p[-2])
    return p[: degree + 1]


def test_gram_basis_with_learned_beta_is_kagn():
    basis = GramBasis(5, degree=4, learn_beta=True, post_act="silu")
    assert basis.beta_weights.shape == (5,)
    with torch.no_grad():
        basis.beta_weights.copy_(torch.tensor([0.3, -0.2, 0.5, 0.1, 0.7]))
    x = torch.randn(7, 5)
    ref = F.silu(torch.stack(_kagn_gram(torch.tanh(x), basis.beta_weights.detach(), 4), -1))
    torch.testing.assert_close(basis(x), ref)
    # learned: the coefficients receive gradients
    basis(x).sum().backward()
    assert basis.beta_weights.grad[1:4].abs().min() > 0


def test_bottleneck_kagn_matches_the_release_formula():
    torch.manual_seed(0)
    layer = BottleneckKANConv2d(8, 12, 3, padding=0, degree=3).eval()
    basis = layer.kan.basis
    assert isinstance(basis, GramBasis) and basis.post_act == "silu"
    assert basis.beta_weights is not None
    assert layer.kan.basis.beta_weights.numel() == 4
    with torch.no_grad():
        basis.beta_weights.copy_(torch.tensor([0.0, 0.4, -0.3, 0.0]))
        layer.norm.running_mean.normal_()
        layer.norm.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 8, 6, 6)
    inner = layer.inner_channels
    t = torch.tanh(F.conv2d(x, layer.down.weight))
    feats = F.silu(torch.stack(_kagn_gram(t, basis.beta_weights.detach(), 3), 2))  # B,C,K,H,W
    feats = feats.reshape(2, inner * 4, 6, 6)  # channel-major: (c, k) pairs
    w = layer.kan.weight.reshape(inner, inner * 4, 3, 3)
    y = F.conv2d(F.conv2d(feats, w), layer.up.weight) + F.conv2d(F.silu(x), layer.base_conv.weight)
    bn = layer.norm
    y = (y - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    y = F.silu(y * bn.weight[:, None, None] + bn.bias[:, None, None])
    torch.testing.assert_close(layer(x), y, rtol=1e-4, atol=1e-5)


def test_bottleneck_basis_options_can_be_overridden():
    plain = BottleneckKANConv2d(8, 8, 3, padding=1, learn_beta=False, post_act=None)
    assert plain.kan.basis.beta_weights is None and plain.kan.basis.post_act is None
