"""ResNeSt: split attention (softmax across radix splits; radix 1 is an SE-gated conv)."""

from __future__ import annotations

import torch

from archbench.models import create_model
from archbench.models.resnest import SplitAttnConv


def _randomize(m: torch.nn.Module) -> None:
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.2)


def test_radix_one_is_a_grouped_conv_with_an_se_gate():
    torch.manual_seed(0)
    sa = SplitAttnConv(16, 16, 3, groups=2, radix=1, min_rd=8)
    _randomize(sa)
    sa.eval()
    assert sa.conv.conv.groups == 2
    x = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        u = sa.conv(x)
        gate = torch.sigmoid(sa.fc2(sa.fc1(u.mean((2, 3), keepdim=True))))
        torch.testing.assert_close(sa(x), u * gate)


def test_radix_weights_are_a_softmax_over_splits():
    torch.manual_seed(0)
    sa = SplitAttnConv(18, 24, 3, groups=2, radix=3, min_rd=8)
    _randomize(sa)
    sa.eval()
    x = torch.randn(2, 18, 5, 5)
    with torch.no_grad():
        u = sa.conv(x)
        w = sa.attention(u)
        assert w.shape == (2, 3, 24, 1, 1)
        torch.testing.assert_close(w.sum(1), torch.ones(2, 24, 1, 1))
        assert (w.std(1) > 0).any()  # the splits get different weights
        splits = u.unflatten(1, (3, 24))
        torch.testing.assert_close(sa(x), (splits * w).sum(1))


def test_resnest50_split_widths():
    with torch.device("meta"):
        model = create_model("resnest50")
    sa = model.stages[1][0].conv2
    assert sa.conv.conv.out_channels == 2 * 128 and sa.conv.conv.groups == 2
    assert sa.fc1.conv.out_channels == 64  # max(128 * 2 // 4, 32)
    assert isinstance(model.stages[1][0].avd, torch.nn.AvgPool2d)
