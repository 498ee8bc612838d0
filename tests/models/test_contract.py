"""The tests every registered model gets (DESIGN.md, "Tests every model gets").

CPU-scale variants run real forward and backward passes; every variant (canonical
ones included) is built and run on the ``meta`` device, which checks shapes at full
resolution without memory or compute; canonical variants' parameter counts are checked
against their cards within 0.5%.
"""

from __future__ import annotations

import math

import pytest
import torch

from archbench.models import ImageClassifier, create_model, get_model_card, list_models

ALL = list_models()
CPU = list_models(scale="cpu")
CANONICAL = list_models(scale="canonical")
NUM_CLASSES = 42


def _size(name: str) -> int:
    return get_model_card(name).img_size


def _map(model: ImageClassifier, out: torch.Tensor) -> torch.Tensor:
    return model.tokens_to_map(out) if out.ndim == 3 else out


def test_families_have_cpu_variants():
    canonical_families = {get_model_card(n).family for n in CANONICAL}
    cpu_families = {get_model_card(n).family for n in CPU}
    assert canonical_families <= cpu_families, (
        f"no CPU-scale variant for {canonical_families - cpu_families}"
    )


@pytest.mark.parametrize("name", CANONICAL)
def test_canonical_param_count_matches_card(name):
    card = get_model_card(name)
    with torch.device("meta"):
        model = create_model(name)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    rel = abs(params / card.params_m - 1)
    assert rel <= 0.005, (
        f"{name}: {params:.3f}M params vs the paper's {card.params_m}M ({100 * rel:.2f}% off)"
    )


@pytest.mark.parametrize("name", ALL)
def test_meta_forward_shapes(name):
    """Builds with the contract's keyword arguments and produces the right shapes at full size."""
    size = _size(name)
    with torch.device("meta"):
        try:
            model = create_model(name, num_classes=NUM_CLASSES, drop_rate=0.1, drop_path_rate=0.1)
        except ValueError as err:  # see tests/models/test_drop_path.py
            assert "no residual branches to drop" in str(err)
            model = create_model(name, num_classes=NUM_CLASSES, drop_rate=0.1)
        assert isinstance(model, ImageClassifier)
        model.eval()
        x = torch.empty(2, model.in_chans, size, size)
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        logits = model.forward_head(feats)
    assert pre.shape == (2, model.num_features)
    assert logits.shape == (2, NUM_CLASSES)
    assert model.feature_info, "feature_info must list at least one stage"
    assert model.feature_info[-1].num_chs > 0
    assert model.get_submodule(model.cam_target) is not None


@pytest.mark.parametrize("name", CPU)
def test_cpu_variant_trains_and_keeps_contract(name):
    size = _size(name)
    model = create_model(name, num_classes=NUM_CLASSES)
    x = torch.randn(2, model.in_chans, size, size)

    # feature_info matches the real intermediate outputs (channels and stride)
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        model.get_submodule(fi.module).register_forward_hook(
            lambda _m, _i, out, key=fi.module: captured.__setitem__(key, out)
        )
        for fi in model.feature_info
    ]
    model.train()
    out = model(x)
    for h in hooks:
        h.remove()
    assert out.shape == (2, NUM_CLASSES)
    assert torch.isfinite(out).all()
    for fi in model.feature_info:
        fmap = _map(model, captured[fi.module])
        assert fmap.shape[1] == fi.num_chs, (
            f"{fi.module}: {fmap.shape[1]} channels, declared {fi.num_chs}"
        )
        expected = size / fi.reduction
        assert fmap.shape[-1] in (math.floor(expected), math.ceil(expected)), (
            f"{fi.module}: width {fmap.shape[-1]}, declared reduction {fi.reduction} of {size}"
        )

    # backward reaches every trainable parameter
    out.float().square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:10]}"

    # eval mode is deterministic, and the head contract holds
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
        assert torch.equal(a, b)
        feats = model.forward_features(x)
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
        assert feats.shape[-1 if feats.ndim == 3 else 1] == model.num_features or feats.ndim == 3
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features)
        model.reset_classifier(7)
        assert model(x).shape == (2, 7)


@pytest.mark.parametrize("name", CPU)
def test_wrong_channel_count_fails_clearly(name):
    size = _size(name)
    model = create_model(name, num_classes=NUM_CLASSES).eval()
    x = torch.randn(1, model.in_chans + 1, size, size)
    with pytest.raises(ValueError, match="channels"):
        model(x)


@pytest.mark.parametrize("name", CPU)
def test_single_channel_build(name):
    size = _size(name)
    model = create_model(name, num_classes=3, in_chans=1).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, size, size)).shape == (1, 3)


@pytest.mark.parametrize("name", CPU)
def test_cam_target_spatial_positions_reach_the_logits(name):
    """Explanations hook ``cam_target``: its spatial map must influence the prediction.

    For class-token models the output of the last block only reaches the head through the
    class token, so the target must sit before the last token mixing (e.g. the last block's
    first norm); a grid-shaped map whose gradient is zero everywhere explains nothing.
    """
    size = _size(name)
    model = create_model(name, num_classes=NUM_CLASSES).eval()
    model.reset_classifier(NUM_CLASSES)  # a fresh head: some families zero-initialise theirs
    store = {}
    layer = model.get_submodule(model.cam_target)
    handle = layer.register_forward_hook(lambda _m, _i, out: store.__setitem__("out", out))
    out = model(torch.randn(2, model.in_chans, size, size))
    handle.remove()
    act = store["out"][0] if isinstance(store["out"], (tuple, list)) else store["out"]
    (grad,) = torch.autograd.grad(out[:, 0].sum(), act)
    grid = _map(model, grad)
    assert grid.ndim == 4, f"cam_target output {tuple(act.shape)} does not map to B x C x H x W"
    assert grid.abs().sum() > 0, (
        f"{name}: the spatial positions of cam_target {model.cam_target!r} do not reach the logits"
    )
