"""MambaMixer: weighted averaging starts as a residual stack; scans agree in both forms."""

from __future__ import annotations

import torch

from archbench.models import create_model
from archbench.models.mambamixer import SelectiveChannelMixer


def test_weighted_average_starts_on_latest_feature():
    model = create_model("mambamixer_pico")
    for k, w in enumerate(model.stages[0].avg_weights):
        assert w.shape == (k + 1,)
        assert w[-1].item() == 1.0 and w[:-1].abs().sum().item() == 0.0


def test_channel_mixer_scans_channels_and_forms_agree():
    mixer = SelectiveChannelMixer(num_tokens=6, d_state=4, expand=1.0).double()
    x = torch.randn(2, 6, 10, dtype=torch.float64)  # (B, L tokens, C channels)
    y = mixer(x)
    assert y.shape == x.shape
    for ssm in (mixer.ssm_fwd, mixer.ssm_bwd):
        ssm.use_ref = True
    torch.testing.assert_close(mixer(x), y, rtol=1e-5, atol=1e-5)
    # permuting the channels changes more than the order of the output: channels interact
    perm = torch.randperm(10)
    assert not torch.allclose(mixer(x[..., perm]), y[..., perm], atol=1e-6)
