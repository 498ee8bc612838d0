"""MambaMixer (ViM2): per-direction scans against the written-out recurrence, cross-scan
orders, and the weighted averaging of earlier features."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archbench.models import create_model
from archbench.models.mambamixer import (
    MambaMixerNet,
    SelectiveChannelMixer,
    SelectiveTokenMixer,
    scan_orders,
)


def _s6_reference(direction, u):
    """One direction written out: causal depthwise conv, SiLU, then the S6 recurrence
    h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, y_t = <h_t, C_t> + D u_t, step by step."""
    conv, ssm = direction.conv, direction.ssm
    k = conv.kernel_size[0]
    e, length = u.shape[1], u.shape[2]
    w = conv.weight[:, 0]  # (E, k)
    padded = F.pad(u, (k - 1, 0))
    x = torch.stack([(padded[..., t : t + k] * w).sum(-1) + conv.bias for t in range(length)], -1)
    x = F.silu(x)
    r, n = ssm.dt_rank, ssm.d_state
    proj = x.transpose(1, 2) @ ssm.x_proj.weight.t()  # (B, L, R + 2N)
    dt = F.softplus(proj[..., :r] @ ssm.dt_proj.weight.t() + ssm.dt_proj.bias)  # (B, L, E)
    Bm, Cm = proj[..., r : r + n], proj[..., r + n :]
    A = -torch.exp(ssm.A_log)
    h = torch.zeros(u.shape[0], e, n, dtype=u.dtype)
    ys = []
    for t in range(length):
        h = (
            torch.exp(dt[:, t, :, None] * A) * h
            + (dt[:, t] * x[..., t])[..., None] * Bm[:, t, None, :]
        )
        ys.append((h * Cm[:, t, None, :]).sum(-1) + ssm.D * x[..., t])
    return torch.stack(ys, -1)


def test_bidirectional_channel_scan_matches_the_written_out_recurrence():
    torch.manual_seed(0)
    mixer = SelectiveChannelMixer(num_tokens=6, d_state=4, expand=1.0).double().eval()
    x = torch.randn(2, 6, 10, dtype=torch.float64)  # (B, L tokens, C channels)
    u, z = mixer.in_proj(x.transpose(1, 2)).chunk(2, dim=-1)
    u = u.transpose(1, 2)  # (B, E, C)
    fwd, bwd = mixer.directions
    y = _s6_reference(fwd, u) + _s6_reference(bwd, u.flip(-1)).flip(-1)
    expected = mixer.out_proj(y.transpose(1, 2) * F.silu(z)).transpose(1, 2)
    with torch.no_grad():
        torch.testing.assert_close(mixer(x), expected, rtol=1e-6, atol=1e-6)
    # each direction has its own convolution and S6
    assert fwd.conv.weight.data_ptr() != bwd.conv.weight.data_ptr()
    assert fwd.ssm.A_log.data_ptr() != bwd.ssm.A_log.data_ptr()


def test_cross_scan_token_mixer_matches_the_written_out_recurrence():
    torch.manual_seed(0)
    grid = (3, 4)
    mixer = SelectiveTokenMixer(8, grid, d_state=4, expand=1.0).double().eval()
    x = torch.randn(2, 12, 8, dtype=torch.float64)
    u, z = mixer.in_proj(x).chunk(2, dim=-1)
    u = u.transpose(1, 2)  # (B, E, 12) in raster order
    g = u.reshape(2, 8, 3, 4)
    rows = g.flatten(2)
    cols = g.transpose(2, 3).flatten(2)  # column by column
    d = mixer.directions
    y_rows = _s6_reference(d[0], rows) + _s6_reference(d[1], rows.flip(-1)).flip(-1)
    y_cols = _s6_reference(d[2], cols) + _s6_reference(d[3], cols.flip(-1)).flip(-1)
    y = y_rows + y_cols.reshape(2, 8, 4, 3).transpose(2, 3).flatten(2)
    expected = mixer.out_proj(y.transpose(1, 2) * F.silu(z))
    with torch.no_grad():
        torch.testing.assert_close(mixer(x), expected, rtol=1e-6, atol=1e-6)


def test_scan_orders_and_options():
    orders = scan_orders((2, 3), "cross")
    assert [o.tolist() for o in orders] == [
        [0, 1, 2, 3, 4, 5],
        [5, 4, 3, 2, 1, 0],
        [0, 3, 1, 4, 2, 5],
        [5, 2, 4, 1, 3, 0],
    ]
    assert len(scan_orders((2, 3), "bidirectional")) == 2
    model = create_model("mambamixer_pico")
    assert all(len(m.directions) == 4 for m in model.stages[0].token_mixers)
    bi = create_model("mambamixer_pico", scan="bidirectional")
    assert all(len(m.directions) == 2 for m in bi.stages[0].token_mixers)
    with pytest.raises(ValueError, match="scan must be"):
        MambaMixerNet(scan="zigzag")


def test_weighted_average_starts_on_latest_feature_and_reaches_early_ones():
    torch.manual_seed(0)
    model = create_model("mambamixer_pico").eval()
    stage = model.stages[0]
    for k, w in enumerate(stage.avg_weights):
        assert w.shape == (k + 1,)
        assert w[-1].item() == 1.0 and w[:-1].abs().sum().item() == 0.0
    # the last mixer's input is the weighted sum of every earlier output
    x = torch.randn(1, 64, 32)
    seen = []
    hook = stage.channel_norms[-1].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        stage.avg_weights[-1].copy_(torch.tensor([0.5, 0.0, 0.0, 0.5]))
        t0 = x + stage.token_mixers[0](stage.token_norms[0](x))
        c0 = t0 + stage.channel_mixers[0](stage.channel_norms[0](t0))
        t1 = c0 + stage.token_mixers[1](stage.token_norms[1](c0))
        stage(x)
    hook.remove()
    torch.testing.assert_close(seen[-1], 0.5 * x + 0.5 * t1)
