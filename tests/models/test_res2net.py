"""Res2Net: hierarchical residual-like connections inside one bottleneck."""

from __future__ import annotations

import torch

from archbench.models import create_model
from archbench.models.res2net import Res2NetBottleneck


def _reference(block: Res2NetBottleneck, x: torch.Tensor) -> torch.Tensor:
    xs = torch.split(block.conv1(x), block.width, 1)
    ys = [block.convs[0](xs[0])]
    for i in (1, 2):
        inp = xs[i] if block.first else xs[i] + ys[-1]
        ys.append(block.convs[i](inp))
    ys.append(block.pool(xs[3]) if block.first else xs[3])
    y = block.conv3(torch.cat(ys, 1))
    shortcut = x if block.downsample is None else block.downsample(x)
    return torch.relu(y + shortcut)


def test_hierarchical_splits_match_the_papers_equation():
    torch.manual_seed(0)
    down = torch.nn.Sequential(torch.nn.Conv2d(64, 128, 1, 2), torch.nn.BatchNorm2d(128))
    blocks = (
        Res2NetBottleneck(128, 32, 1, None, base_width=26, scale=4, first=False),
        Res2NetBottleneck(64, 32, 2, down, base_width=26, scale=4, first=True),
    )
    for block in blocks:
        for p in block.parameters():  # undo the zero init so every path matters
            torch.nn.init.normal_(p, std=0.1)
        block.eval()
        x = torch.randn(2, block.conv1.conv.in_channels, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(block(x), _reference(block, x))


def test_26w_4s_widths():
    with torch.device("meta"):
        model = create_model("res2net50_26w_4s")
    block = model.stages[0][0]
    assert block.width == 26 and block.conv1.conv.out_channels == 104
    assert len(block.convs) == 3
    assert model.stages[3][0].width == 208  # 512 * 26 / 64


def test_res2net101_26w_4s_depth_and_released_count():
    with torch.device("meta"):
        model = create_model("res2net101_26w_4s")
    assert [len(s) for s in model.stages] == [3, 4, 23, 3]
    n = sum(p.numel() for p in model.parameters())
    assert abs(n / 1e6 - 45.21) / 45.21 < 0.005  # official release / timm: 45.21M
