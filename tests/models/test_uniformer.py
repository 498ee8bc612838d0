"""UniFormer: local MHRA is a convolution (only nearby tokens interact), global MHRA is not."""

from __future__ import annotations

import torch

from archbench.models import create_model
from archbench.models.uniformer import GlobalMHRABlock, LocalMHRABlock


def _influence(block: torch.nn.Module, size: int = 8) -> torch.Tensor:
    """How much each output position changes when input position (0, 0) changes."""
    block.eval()
    x = torch.randn(1, block.pos_embed.in_channels, size, size)
    x2 = x.clone()
    x2[..., 0, 0] += torch.randn(x.shape[1])
    with torch.no_grad():
        return (block(x2) - block(x)).abs().sum(1)[0]


def test_local_mhra_is_local_and_global_mhra_is_global():
    torch.manual_seed(0)
    local = _influence(LocalMHRABlock(16, 2.0, 0.0, 0.0))
    # 3x3 DPE then 5x5 depthwise affinity: reach of 1 + 2 = 3 positions
    assert local[4:, :].abs().max() == 0 and local[:, 4:].abs().max() == 0
    assert local[3, 3] > 0
    glob = _influence(GlobalMHRABlock(16, 2, 2.0, True, 0.0, 0.0))
    assert glob[7, 7] > 0


def test_stage_layout_and_heads():
    m = create_model("uniformer_pico")
    kinds = [type(b).__name__ for s in m.stages for b in s if "MHRA" in type(b).__name__]
    assert kinds == ["LocalMHRABlock"] * 3 + ["GlobalMHRABlock"] * 3
    assert m.stages[3][2].attn.num_heads == 192 // 32
    with torch.device("meta"):
        s = create_model("uniformer_small")
    assert s.stages[2][2].attn.num_heads == 5 and s.stages[3][2].attn.num_heads == 8
