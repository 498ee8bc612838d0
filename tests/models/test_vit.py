"""ViT / DeiT: size checks, position-embedding resampling, the distillation token."""

import pytest
import torch

from archbench.models import create_model
from archbench.models.vit import (
    DistilledVisionTransformer,
    VisionTransformer,
    adapt_state_dict,
    resample_pos_embed,
)


def test_untileable_img_size_fails_at_build_naming_valid_sizes():
    with pytest.raises(ValueError, match=r"multiple of 16 \(nearest valid: 224 or 240\)"):
        create_model("vit_tiny_patch16_224", img_size=230)
    with pytest.raises(ValueError, match="nearest valid: 32 or 36"):
        create_model("vit_pico", img_size=34)


def test_other_input_size_fails_at_forward_with_a_clear_message():
    model = create_model("vit_pico").eval()
    with pytest.raises(ValueError, match=r"built for img_size=\(32, 32\).*got \(64, 64\)"):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(1, 1, 32, 32))


def test_prefix_tokens_and_token_map():
    vit = create_model("vit_pico")
    deit = create_model("deit_pico_distilled")
    assert vit.num_prefix_tokens == 1 and deit.num_prefix_tokens == 2
    assert vit.pos_embed.shape == (1, 1 + 64, 128)
    assert deit.pos_embed.shape == (1, 2 + 64, 128)
    with torch.no_grad():
        tokens = deit.forward_features(torch.randn(2, 3, 32, 32))
    assert tokens.shape == (2, 66, 128)
    fmap = deit.tokens_to_map(tokens)
    assert fmap.shape == (2, 128, 8, 8)
    # the map starts at the first patch token: both prefix tokens are dropped
    torch.testing.assert_close(fmap[:, :, 0, 0], tokens[:, 2])
    torch.testing.assert_close(fmap[:, :, 7, 7], tokens[:, -1])


def test_no_weight_decay_names_the_tokens_and_positions():
    assert create_model("vit_pico").no_weight_decay() == {"pos_embed", "cls_token"}
    names = create_model("deit_pico_distilled").no_weight_decay()
    assert names == {"pos_embed", "cls_token", "dist_token"}
    params = dict(create_model("deit_pico_distilled").named_parameters())
    assert names <= set(params)


def test_resample_keeps_constant_embedding_constant_and_prefix_untouched():
    pe = torch.cat([torch.randn(1, 2, 8), torch.full((1, 36, 8), 0.7)], dim=1)
    for grid in [(12, 12), (3, 3), (4, 9)]:
        out = resample_pos_embed(pe, grid, num_prefix_tokens=2)
        assert out.shape == (1, 2 + grid[0] * grid[1], 8)
        torch.testing.assert_close(out[:, :2], pe[:, :2])
        torch.testing.assert_close(out[:, 2:], torch.full_like(out[:, 2:], 0.7))
    assert resample_pos_embed(pe, 6, num_prefix_tokens=2) is pe


def test_resample_follows_a_smooth_field():
    # a low-frequency field sampled on a 16x16 grid, resampled to 8x8, must match the same
    # field sampled at the 8x8 cell centres (pixel-centre convention, align_corners=False)
    def field(n: int) -> torch.Tensor:
        c = (torch.arange(n) + 0.5) / n
        yy, xx = torch.meshgrid(c, c, indexing="ij")
        f = torch.stack([torch.sin(2 * xx), torch.cos(1.5 * yy), xx * yy], dim=-1)
        return f.reshape(1, n * n, 3)

    src = torch.cat([torch.zeros(1, 1, 3), field(16)], dim=1)
    out = resample_pos_embed(src, 8)
    torch.testing.assert_close(out[:, 1:], field(8), atol=2e-2, rtol=0)


def test_resample_rejects_bad_shapes():
    with pytest.raises(ValueError, match="square grid"):
        resample_pos_embed(torch.zeros(1, 1 + 10, 4), 4)
    with pytest.raises(ValueError, match=r"\(1, N, C\)"):
        resample_pos_embed(torch.zeros(10, 4), 4)


def test_model_built_at_32_loads_weights_of_one_built_at_64():
    big = create_model("vit_pico", img_size=64, num_classes=5).eval()
    assert big.patch_embed.grid_size == (16, 16)
    small = create_model("vit_pico", img_size=32, num_classes=5).eval()
    with pytest.raises(RuntimeError, match="pos_embed"):
        small.load_state_dict(big.state_dict())
    small.load_state_dict(adapt_state_dict(big.state_dict(), small))
    expected = resample_pos_embed(big.pos_embed.detach(), (8, 8))
    torch.testing.assert_close(small.pos_embed.detach(), expected)
    torch.testing.assert_close(small.head.weight, big.head.weight)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = small(x)
        small.pos_embed.zero_()
        without_positions = small(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    assert out.abs().max() < 100  # a sane scale, like the source model's logits
    assert not torch.allclose(out, without_positions)  # the resampled positions are used


def test_distilled_deit_averages_heads_at_eval():
    model = create_model("deit_pico_distilled", num_classes=6).eval()
    assert isinstance(model, DistilledVisionTransformer)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        tokens = model.forward_features(x)
        expected = (model.head(tokens[:, 0]) + model.head_dist(tokens[:, 1])) / 2
        out = model(x)
        model.set_distilled_training(True)
        assert torch.equal(model(x), out)  # eval ignores the flag
    torch.testing.assert_close(out, expected)
    # the two heads are distinct and both matter
    assert not torch.allclose(model.head(tokens[:, 0]), expected)


def test_distilled_deit_returns_both_heads_in_training_when_asked():
    model = create_model("deit_pico_distilled", num_classes=6).train()
    x = torch.randn(3, 3, 32, 32)
    plain = model(x)
    assert isinstance(plain, torch.Tensor) and plain.shape == (3, 6)
    model.set_distilled_training(True)
    cls_logits, dist_logits = model(x)
    assert cls_logits.shape == dist_logits.shape == (3, 6)
    torch.testing.assert_close((cls_logits + dist_logits) / 2, plain)
    (cls_logits.sum() + dist_logits.sum()).backward()
    assert model.head.weight.grad is not None and model.head_dist.weight.grad is not None
    assert model.dist_token.grad is not None


def test_distilled_reset_classifier_resets_both_heads():
    model = create_model("deit_pico_distilled")
    model.reset_classifier(3)
    assert model.head.out_features == 3 and model.head_dist.out_features == 3
    model.reset_classifier(0)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, model.num_features)


def test_plain_vit_has_no_distillation_parts():
    model = VisionTransformer(patch_size=4, embed_dim=32, depth=1, num_heads=2, img_size=16)
    assert not hasattr(model, "dist_token") and not hasattr(model, "head_dist")
    assert model.num_prefix_tokens == 1
