"""CSPNet: half of each stage crosses it; the other half goes through the blocks."""

from __future__ import annotations

import torch

from archbench.models import create_model
from archbench.models.cspnet import CrossStage


def test_stage_is_split_blocks_partial_transition_and_fusion():
    torch.manual_seed(0)
    model = create_model("cspnet_pico").eval()
    stage: CrossStage = model.stages[1]
    x = torch.randn(2, 32, 16, 16)
    with torch.no_grad():
        y = stage.conv_split(stage.conv_down(x))
        cross, part = y[:, : stage.half], y[:, stage.half :]
        expected = stage.transition_fuse(
            torch.cat([cross, stage.transition_part(stage.blocks(part))], 1)
        )
        torch.testing.assert_close(stage(x), expected)


def test_blocks_see_only_half_of_the_stage_width():
    with torch.device("meta"):
        model = create_model("cspdarknet53")
    first, second = model.stages[0], model.stages[1]
    # stage 1: 64 channels down, split 128 -> 64 + 64, blocks 64 wide with a 32 bottleneck
    assert first.conv_split.conv.out_channels == 128 and first.half == 64
    assert first.blocks[0].conv1.conv.out_channels == 32
    # later stages: 128 down, split into 64 + 64, full-width (64) Darknet blocks
    assert second.conv_down.conv.out_channels == 128 and second.half == 64
    assert second.blocks[0].conv1.conv.weight.shape[:2] == (64, 64)
    assert [len(s.blocks) for s in model.stages] == [1, 2, 8, 8, 4]


def test_cross_part_bypasses_the_blocks():
    model = create_model("cspnet_pico").eval()
    stage = model.stages[2]
    x = torch.randn(1, 64, 8, 8)
    seen = []
    hook = stage.blocks.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].shape[1]))
    stage(x)
    hook.remove()
    assert seen == [stage.half] and stage.conv_split.conv.out_channels == 2 * stage.half


def test_leaky_relu_slope_is_darknets_0_1():
    model = create_model("cspnet_pico")
    slopes = {m.negative_slope for m in model.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.1}
    x = torch.tensor([-2.0, 3.0])
    leaky = next(m for m in model.modules() if isinstance(m, torch.nn.LeakyReLU))
    torch.testing.assert_close(leaky(x), torch.tensor([-0.2, 3.0]))
