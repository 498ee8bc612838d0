"""SparK: masked positions stay zero through the sparse CNN, sparse BatchNorm statistics,
the loss by hand, the decoder's shapes, and token models refused."""

from __future__ import annotations

import pytest
import torch

from archbench.data import load_dataset
from archbench.models import create_model
from archbench.ssl.spark import (
    LightDecoder,
    check_sparse_model,
    random_active_mask,
    spark_loss,
    sparse_intermediates,
    sparse_mode,
)
from archbench.train import create_task, fit, load_recipe


@pytest.mark.parametrize("name", ["resnet_pico", "convnext_pico"])
def test_masked_positions_stay_zero_through_every_stage(name):
    model = create_model(name, num_classes=10, img_size=32).train()
    reductions = check_sparse_model(model, 32)
    grid = 32 // reductions[-1]
    active = random_active_mask(4, grid, 0.5, torch.Generator().manual_seed(0))
    assert int(active.sum()) == 4 * round(grid * grid * 0.5)
    x = torch.randn(4, 3, 32, 32)
    stages = sparse_intermediates(model, x, active)
    for feat, r in zip(stages, reductions):
        up = active.repeat_interleave(feat.shape[-1] // grid, 2)
        up = up.repeat_interleave(feat.shape[-1] // grid, 3)
        assert feat.shape[-1] == 32 // r
        masked = feat.masked_select(~up.expand_as(feat))
        visible = feat.masked_select(up.expand_as(feat))
        assert masked.abs().max() == 0
        assert visible.abs().max() > 0
    # without the sparse mode the same masked input leaks into masked positions
    with torch.no_grad():
        dense = model.forward_intermediates(
            x * active.repeat_interleave(32 // grid, 2).repeat_interleave(32 // grid, 3)
        )
    up = active.repeat_interleave(dense[-1].shape[-1] // grid, 2).repeat_interleave(
        dense[-1].shape[-1] // grid, 3
    )
    assert dense[-1].masked_select(~up.expand_as(dense[-1])).abs().max() > 0


def test_sparse_batchnorm_uses_visible_positions_only():
    bn = torch.nn.BatchNorm2d(2).train()
    model = torch.nn.Sequential(bn)
    x = torch.randn(3, 2, 4, 4) * 3 + 5
    active = torch.zeros(3, 1, 2, 2, dtype=torch.bool)
    active[:, :, 0, 0] = True
    active[0, :, 1, 1] = True
    with sparse_mode(model, active):
        y = model(x)
    pix = active.repeat_interleave(2, 2).repeat_interleave(2, 3).expand_as(x)
    vis = x.transpose(0, 1)[pix.transpose(0, 1)].view(2, -1)
    mean, var = vis.mean(1), vis.var(1, unbiased=False)
    expected = (x - mean.view(1, 2, 1, 1)) / torch.sqrt(var.view(1, 2, 1, 1) + bn.eps)
    assert torch.allclose(y[pix], expected[pix], atol=1e-5)
    assert (y[~pix] == 0).all()
    # running statistics moved towards the visible positions' statistics only
    n = vis.shape[1]
    assert torch.allclose(bn.running_mean, 0.1 * mean, atol=1e-5)
    assert torch.allclose(bn.running_var, 0.9 + 0.1 * vis.var(1, unbiased=True), atol=1e-4)
    assert n == 16 and bn.momentum == 0.1


def test_loss_is_the_normalized_pixel_error_on_masked_patches():
    images = torch.randn(1, 1, 4, 4)
    recon = torch.zeros(1, 1, 4, 4)
    active = torch.tensor([[[[True, False], [True, True]]]])  # only patch (0, 1) masked
    patch = images[0, 0, 0:2, 2:4].flatten()
    target = (patch - patch.mean()) / torch.sqrt(patch.var() + 1e-6)
    expected = float(target.pow(2).mean())
    assert float(spark_loss(recon, images, active, 2)) == pytest.approx(expected, rel=1e-5)
    # errors on visible patches do not count
    recon2 = recon.clone()
    recon2[..., 0:2, 0:2] = 100.0
    assert float(spark_loss(recon2, images, active, 2)) == pytest.approx(expected, rel=1e-5)


def test_decoder_upsamples_to_the_image_and_fills_mask_tokens():
    dec = LightDecoder([16, 32, 64, 128], [1, 2, 4, 8], width=32, out_chans=3)
    assert len(dec.blocks) == 3 and dec.levels == [3, 2, 1, 0]
    stages = [torch.zeros(2, c, 16 // r, 16 // r) for c, r in zip([16, 32, 64, 128], [1, 2, 4, 8])]
    active = torch.ones(2, 1, 2, 2, dtype=torch.bool)
    active[:, :, 0, 0] = False
    out = dec(stages, active)
    assert out.shape == (2, 3, 16, 16)
    dec.eval()
    dense = dec.densify(3, stages[3], active)
    token_only = dec.projs[3](dec.mask_tokens[3].expand(2, -1, 2, 2))
    assert torch.allclose(dense[:, :, 0, 0], token_only[:, :, 0, 0], atol=1e-6)


def test_token_models_are_refused():
    for name in ("vit_pico", "mixer_pico"):
        token_model = create_model(name, num_classes=10, img_size=32)
        with pytest.raises(ValueError, match="token model"):
            check_sparse_model(token_model, 32)
    # a convolutional but isotropic model has no stage hierarchy for the decoder
    convmixer = create_model("convmixer_pico", num_classes=10, img_size=32)
    with pytest.raises(ValueError, match="isotropic"):
        check_sparse_model(convmixer, 32)
    resnet = create_model("resnet_pico", num_classes=10, img_size=32)
    with pytest.raises(ValueError, match="multiple"):
        check_sparse_model(resnet, 36)
    with pytest.raises(ValueError, match="mask_ratio"):
        create_task("spark", {"mask_ratio": 1.0})


def test_fit_runs_and_vit_fails_before_training(tmp_path):
    data = load_dataset("shapes:n_train=32,n_val=16,n_test=16,img_size=16")
    model = create_model("resnet_pico", num_classes=data.num_classes, img_size=16)
    recipe = load_recipe("cpu-fast").replace(
        epochs=1, batch_size=16, warmup_epochs=0, task="spark", task_args={"decoder_width": 16}
    )
    res = fit(model, data, recipe, tmp_path / "cnn", progress=False)
    assert res.status == "completed" and res.history[-1]["val_loss"] > 0
    vit = create_model("vit_pico", num_classes=data.num_classes, img_size=16)
    with pytest.raises(ValueError, match="token model"):
        fit(vit, data, recipe, tmp_path / "vit", progress=False)
