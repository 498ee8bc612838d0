"""OverLoCK: ContMix's dynamic kernels against written-out computations, counts, aux loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from archbench.models import create_model, get_model_card
from archbench.models.overlock import ContMixBlock, neighborhood_aggregate


def _start(i: int, size: int, k: int) -> int:
    return min(max(i - k // 2, 0), size - k)


def test_neighborhood_aggregate_is_a_per_pixel_convolution():
    torch.manual_seed(0)
    b, g, h, w, c, k = 2, 3, 6, 7, 4, 3
    attn = torch.randn(b, g, h, w, k * k)
    value = torch.randn(b, g, h, w, c)
    got = neighborhood_aggregate(attn, value, k)
    want = torch.zeros_like(got)
    for i in range(h):
        for j in range(w):
            si, sj = _start(i, h, k), _start(j, w, k)
            for a in range(k):
                for bb in range(k):
                    want[:, :, i, j] += (
                        attn[:, :, i, j, a * k + bb, None] * value[:, :, si + a, sj + bb]
                    )
    torch.testing.assert_close(got, want)
    # away from the borders the window is centred: a convolution with each pixel's kernel
    cols = F.unfold(value.permute(0, 1, 4, 2, 3).reshape(b, g * c, h, w), k)  # (B, gc*k*k, L)
    cols = cols.reshape(b, g, c, k * k, h - k + 1, w - k + 1)
    inner = torch.einsum("bgijt,bgctij->bgijc", attn[:, :, 1:-1, 1:-1], cols)
    torch.testing.assert_close(got[:, :, 1:-1, 1:-1], inner)


def _block() -> ContMixBlock:
    torch.manual_seed(0)
    block = ContMixBlock(16, 8, kernel_size=5, smk_size=3, num_heads=2, mlp_ratio=2.0).eval()
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    block.rpb1.data.normal_()
    block.rpb2.data.normal_()
    return block


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    s = (1, -1, 1, 1)
    return (x - bn.running_mean.view(s)) / torch.sqrt(
        bn.running_var.view(s) + bn.eps
    ) * bn.weight.view(s) + bn.bias.view(s)


def test_dynamic_kernels_written_out():
    """Taps = softmax(W_proj (q . pooled context) + b + relative position bias), per head."""
    block = _block()
    x_f = torch.randn(2, 24, 6, 7)
    small, large = block.dynamic_kernels(x_f)
    g, h, w = 4, 6, 7
    q = _bn(F.conv2d(x_f[:, :16], block.weight_query[0].weight), block.weight_query[1])
    q = q * (16 / g) ** -0.5
    ctx = F.adaptive_avg_pool2d(x_f[:, 16:], 7)
    kk = _bn(F.conv2d(ctx, block.weight_key[1].weight), block.weight_key[2])
    q = q.reshape(2, g, 2, h, w)  # 8 query channels -> 4 heads of 2
    kk = kk.reshape(2, g, 2, 49)
    aff = torch.einsum("bgcij,bgcl->bgijl", q, kk)
    wp = block.weight_proj.weight[:, :, 0, 0]  # (9 + 25, 49)
    taps = aff @ wp.T + block.weight_proj.bias
    for got, lo, k, table in ((small, 0, 3, block.rpb1), (large, 9, 5, block.rpb2)):
        want = taps[..., lo : lo + k * k].clone()
        for i in range(h):
            for j in range(w):
                si, sj = _start(i, h, k), _start(j, w, k)
                for a in range(k):
                    for bb in range(k):
                        dy, dx = si + a - i + k - 1, sj + bb - j + k - 1
                        want[:, :, i, j, a * k + bb] += table[:, dy, dx]
        torch.testing.assert_close(got, want.softmax(-1), rtol=1e-4, atol=1e-6)


def test_contmix_applies_small_and_large_kernels_to_channel_halves():
    block = _block()
    x = torch.randn(2, 16, 6, 7)
    x_f = torch.randn(2, 24, 6, 7)
    small, large = block.dynamic_kernels(x_f)
    out = block.contmix(x, x_f)
    v = x.reshape(2, 2, 4, 2, 6, 7)  # (B, kernel, head, C', H, W)
    for half, (kern, k) in enumerate(((small, 3), (large, 5))):
        for i in range(6):
            for j in range(7):
                si, sj = _start(i, 6, k), _start(j, 7, k)
                patch = v[:, half, :, :, si : si + k, sj : sj + k].reshape(2, 4, 2, k * k)
                want = (patch * kern[:, :, i, j, None, :]).sum(-1).reshape(2, 8)
                torch.testing.assert_close(out[:, half * 8 : half * 8 + 8, i, j], want)


def test_small_maps_are_resized_to_the_kernel_and_pooled_back():
    block = _block()
    x, x_f = torch.randn(1, 16, 3, 4), torch.randn(1, 24, 3, 4)
    size = (5, int(5 / 3 * 4))
    up = block.contmix(
        F.interpolate(x, size=size, mode="bilinear", align_corners=False),
        F.interpolate(x_f, size=size, mode="bilinear", align_corners=False),
    )
    torch.testing.assert_close(block.contmix(x, x_f), F.adaptive_avg_pool2d(up, (3, 4)))


@pytest.mark.parametrize(
    "name, deploy_m",
    [("overlock_xt", 16), ("overlock_t", 33), ("overlock_s", 56), ("overlock_b", 95)],
)
def test_counts_train_time_and_reparameterized(name, deploy_m):
    with torch.device("meta"):
        model = create_model(name).eval()
    card = get_model_card(name)
    train = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(train / card.params_m - 1) < 0.005
    model.reparameterize()
    deploy = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("aux.")) / 1e6
    assert round(deploy) == deploy_m == card.extra["params_m_deploy"]


def test_reparameterize_keeps_outputs():
    torch.manual_seed(0)
    model = create_model("overlock_pico", num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    model.reparameterize()
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)


def test_aux_loss_is_weighted_cross_entropy_of_the_overview_head():
    torch.manual_seed(0)
    model = create_model("overlock_pico", num_classes=5, aux_head=True, aux_weight=0.4).train()
    store = {}
    model.overview.register_forward_hook(lambda _m, _i, out: store.__setitem__("ov", out))
    x = torch.randn(3, 3, 32, 32)
    model(x)
    targets = torch.softmax(torch.randn(3, 5), -1)
    ov = store["ov"]
    bn, fc = model.aux[0], model.aux[3]
    mean, var = ov.mean((0, 2, 3)), ov.var((0, 2, 3), unbiased=False)
    normed = (ov - mean[:, None, None]) / torch.sqrt(var[:, None, None] + bn.eps)
    pooled = (normed * bn.weight[:, None, None] + bn.bias[:, None, None]).mean((2, 3))
    logits = pooled @ fc.weight.T + fc.bias
    want = 0.4 * -(targets * torch.log_softmax(logits, -1)).sum(-1).mean()
    torch.testing.assert_close(model.aux_loss(targets), want, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="soft targets of shape"):
        model.aux_loss(targets[:2])
    model.eval()
    model(x)
    assert model.aux_loss(targets) is None


def test_bad_options_fail_clearly():
    with pytest.raises(ValueError, match="divisible by 4 x num_heads"):
        create_model("overlock_pico", sub_num_heads=(5, 2))
    with pytest.raises(ValueError, match="kernel_size must be one of"):
        create_model("overlock_pico", kernel_sizes=(7, 5, 4, 5))
