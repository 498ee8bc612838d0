"""Adaptive rotated convolution against the ARC release's interpolation matrix."""

import math

import pytest
import torch
import torch.nn.functional as F

from archbench.layers.conv_variants import (
    AdaptiveRotatedConv2d,
    rotate_kernels,
    rotation_matrix,
)


def _release_matrix(theta: float) -> torch.Tensor:
    """The 9 x 9 matrix of the ARC release, entry by entry, for one angle."""
    x, y = math.cos(theta), math.sin(theta)
    a, b, c = x - y, x * y, x + y
    m = torch.zeros(9, 9, dtype=torch.float64)
    m[4, 4] = 1.0
    if theta >= 0:
        rows = {
            0: {0: a, 1: 1 - a},
            1: {1: x - b, 2: b, 4: 1 - c + b, 5: y - b},
            2: {2: a, 5: 1 - a},
            3: {0: b, 1: y - b, 3: x - b, 4: 1 - c + b},
            5: {4: 1 - c + b, 5: x - b, 7: y - b, 8: b},
            6: {3: 1 - a, 6: a},
            7: {3: y - b, 4: 1 - c + b, 6: b, 7: x - b},
            8: {7: 1 - a, 8: a},
        }
    else:
        rows = {
            0: {0: c, 3: 1 - c},
            1: {0: -b, 1: x + b, 3: b - y, 4: 1 - a - b},
            2: {1: 1 - c, 2: c},
            3: {3: x + b, 4: 1 - a - b, 6: -b, 7: b - y},
            5: {1: b - y, 2: -b, 4: 1 - a - b, 5: x + b},
            6: {6: c, 7: 1 - c},
            7: {4: 1 - a - b, 5: b - y, 7: x + b, 8: -b},
            8: {5: 1 - c, 8: c},
        }
    for r, cols in rows.items():
        for col, v in cols.items():
            m[r, col] = v
    return m


@pytest.mark.parametrize("deg", [-40.0, -15.0, 0.0, 10.0, 30.0, 45.0])
def test_rotation_matrix_matches_the_release(deg):
    theta = math.radians(deg)
    ours = rotation_matrix(torch.tensor([theta], dtype=torch.float64))[0]
    torch.testing.assert_close(ours, _release_matrix(theta))


@pytest.mark.parametrize("deg", [15.0, 30.0, 45.0, -30.0])
def test_rotated_all_ones_kernel_keeps_its_sum(deg):
    w = torch.ones(1, 1, 1, 3, 3)
    rotated = rotate_kernels(w, torch.full((1, 1), math.radians(deg)))
    torch.testing.assert_close(rotated.sum(), torch.tensor(9.0))
    # every tap keeps a positive share: corners are not dropped
    assert (rotated > 0.99).all()


def test_rotate_kernels_applies_each_angle_to_its_kernel():
    w = torch.randn(2, 3, 4, 3, 3, dtype=torch.float64)
    theta = torch.tensor([[0.3, -0.5], [0.0, 0.7]], dtype=torch.float64)
    out = rotate_kernels(w, theta)
    for bi in range(2):
        for n in range(2):
            m = _release_matrix(float(theta[bi, n]))
            ref = (w[n].reshape(12, 9) @ m.T).reshape(3, 4, 3, 3)
            torch.testing.assert_close(out[bi, n], ref)


def test_routing_is_bounded_and_ordered_as_the_release():
    torch.manual_seed(0)
    arc = AdaptiveRotatedConv2d(8, 4, 3, num_kernels=2).eval()
    with torch.no_grad():
        arc.to_angle.weight.mul_(1e4)  # saturate softsign
    x = torch.randn(3, 8, 5, 5)
    theta, lam = arc.route(x)
    assert theta.abs().max() <= math.radians(40.0) + 1e-6
    assert theta.abs().max() > math.radians(39.0)
    # the release: dw conv -> LayerNorm per position -> ReLU -> average pool -> linear
    z = arc.route_dw(x).permute(0, 2, 3, 1)
    z = F.relu(F.layer_norm(z, (8,), arc.route_norm.weight, arc.route_norm.bias)).mean((1, 2))
    torch.testing.assert_close(lam, torch.sigmoid(z @ arc.to_weight.weight.T + arc.to_weight.bias))
    ref_theta = F.softsign(z @ arc.to_angle.weight.T) * math.radians(40.0)
    torch.testing.assert_close(theta, ref_theta)
    assert arc.to_angle.bias is None


def test_routing_has_dropout_in_training():
    arc = AdaptiveRotatedConv2d(16, 4, 3, num_kernels=2)
    assert arc.drop_weight.p == arc.drop_angle.p == 0.2
    x = torch.randn(2, 16, 5, 5)
    arc.train()
    torch.manual_seed(0)
    t1, _ = arc.route(x)
    torch.manual_seed(1)
    t2, _ = arc.route(x)
    assert not torch.allclose(t1, t2)
    arc.eval()
    torch.testing.assert_close(arc.route(x)[0], arc.route(x)[0])


def test_arconv_output_is_the_rotated_kernel_convolution():
    torch.manual_seed(0)
    arc = AdaptiveRotatedConv2d(4, 5, 3, num_kernels=3).eval()
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        theta, lam = arc.route(x)
        y = arc(x)
    for bi in range(2):
        k = sum(
            lam[bi, n]
            * (
                _release_matrix(float(theta[bi, n])).float() @ arc.weight[n].reshape(-1, 9).T
            ).T.reshape(5, 4, 3, 3)
            for n in range(3)
        )
        torch.testing.assert_close(y[bi : bi + 1], F.conv2d(x[bi : bi + 1], k, padding=1))


def test_arconv_rejects_other_kernel_sizes():
    with pytest.raises(ValueError, match="3x3 kernels only"):
        AdaptiveRotatedConv2d(4, 4, 5)
