"""ViR: the whole network gives the same logits in its parallel and recurrent forms."""

from __future__ import annotations

import torch

from archbench.models import create_model


def test_vir_parallel_recurrent_chunkwise_same_logits():
    model = create_model("vir_pico", num_classes=5, chunk_size=16).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
        for mode in ("recurrent", "chunkwise"):
            model.set_mode(mode)
            torch.testing.assert_close(model(x), ref, rtol=1e-9, atol=1e-9)


def test_class_token_is_last_and_maps_drop_it():
    model = create_model("vir_pico").eval()
    feats = model.forward_features(torch.randn(1, 3, 32, 32))
    assert feats.shape == (1, 65, 64)
    assert model.tokens_to_map(feats).shape == (1, 64, 8, 8)
    torch.testing.assert_close(model.forward_head(feats, pre_logits=True), feats[:, -1])
