"""VoVNet / VoVNetV2: one-shot aggregation widths, eSE, identity shortcuts."""

from __future__ import annotations

import torch

from archbench.models import create_model
from archbench.models.vovnet import EffectiveSE, OsaBlock


def test_ese_keeps_shape_and_is_a_hard_sigmoid_channel_gate():
    torch.manual_seed(0)
    ese = EffectiveSE(12)
    assert sum(p.numel() for p in ese.parameters()) == 12 * 12 + 12  # no reduction
    x = torch.randn(2, 12, 5, 7)
    y = ese(x)
    assert y.shape == x.shape
    pooled = x.mean((2, 3), keepdim=True)
    gate = torch.clamp(ese.fc(pooled) / 6 + 0.5, 0, 1)
    torch.testing.assert_close(y, x * gate)


def test_osa_concatenates_input_and_every_layer_once():
    block = OsaBlock(128, 128, 256, 5, ese=False, residual=False, drop_path=0.0)
    assert block.concat_chs == 128 + 5 * 128
    assert block.fuse.conv.weight.shape == (256, 768, 1, 1)
    seen = []
    block.fuse.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].shape))
    x = torch.randn(1, 128, 6, 6)
    block(x)
    assert seen[0] == (1, 768, 6, 6)


def test_vovnet39_stage_widths_and_v2_additions():
    with torch.device("meta"):
        v1 = create_model("vovnet39")
        v2 = create_model("vovnet39_v2")
    concat = [blk.concat_chs for stage in v1.stages for blk in stage if isinstance(blk, OsaBlock)]
    assert concat == [128 + 640, 256 + 800, 512 + 960, 768 + 960, 768 + 1120, 1024 + 1120]
    assert not any(isinstance(m, EffectiveSE) for m in v1.modules())
    v2_blocks = [[b for b in s if isinstance(b, OsaBlock)] for s in v2.stages]
    assert [[b.residual for b in s] for s in v2_blocks] == [[False], [False], [False, True]] + [
        [False, True]
    ]
    assert [[isinstance(b.attn, EffectiveSE) for b in s] for s in v2_blocks] == [
        [True],
        [True],
        [False, True],
        [False, True],
    ]


def test_identity_shortcut_adds_the_input():
    torch.manual_seed(0)
    block = OsaBlock(8, 4, 8, 2, ese=True, residual=True, drop_path=0.0).eval()
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        y = block.attn(
            block.fuse(torch.cat([x, block.convs[0](x), block.convs[1](block.convs[0](x))], 1))
        )
        torch.testing.assert_close(block(x), x + y)


def test_depthwise_vovnet19_separable_convs_and_reduction():
    from archbench.models.vovnet import SeparableConvNormAct

    with torch.device("meta"):
        model = create_model("ese_vovnet19b_dw")
    n = sum(p.numel() for p in model.parameters())
    assert abs(n / 1e6 - 6.54) / 6.54 < 0.005  # timm's published count
    assert isinstance(model.stem[1], SeparableConvNormAct)
    blocks = [b for s in model.stages for b in s if isinstance(b, OsaBlock)]
    assert len(blocks) == 4 and all(isinstance(b.attn, EffectiveSE) for b in blocks)
    assert all(len(b.convs) == 3 for b in blocks)
    dw = blocks[0].convs[0].conv_dw
    assert dw.groups == dw.in_channels == 128 and dw.bias is None
    # the fuse takes the unreduced input: 64 + 3 * 128 in stage 1, 256 + 3 * 160 in stage 2
    assert [b.concat_chs for b in blocks] == [64 + 384, 256 + 480, 512 + 576, 768 + 672]


def test_depthwise_osa_block_written_out():
    torch.manual_seed(0)
    block = OsaBlock(6, 4, 8, 2, ese=False, residual=False, drop_path=0.0, depthwise=True)
    block.eval()
    x = torch.randn(2, 6, 5, 5)

    def sep(conv, t):
        t = torch.nn.functional.conv2d(t, conv.conv_dw.weight, None, 1, 1, 1, t.shape[1])
        return conv.conv_pw(t)

    with torch.no_grad():
        r = block.reduce(x)
        assert r.shape[1] == 4
        y1 = sep(block.convs[0], r)
        y2 = sep(block.convs[1], y1)
        torch.testing.assert_close(block(x), block.fuse(torch.cat([x, y1, y2], 1)))
