"""``forward_intermediates`` and ``feature_info`` on every registered model.

CPU-scale variants run on real tensors at their card's size: one output per
``feature_info`` entry, each with the declared channels and reduction, isotropic models
listing every block, index selection, and agreement with a pass written out by hand
for ResNet and ViT. Full-size variants run on ``meta`` (count and channels).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn as nn

from archbench.models import (
    FeatureInfo,
    ImageClassifier,
    create_model,
    get_model_card,
    list_models,
)

ALL = list_models()
CPU = list_models(scale="cpu")
NUM_CLASSES = 42


def _meta_variants() -> list[str]:
    """Every CPU-scale variant and the first full-size variant of each family.

    A full-size forward on ``meta`` costs about a second of Python per model (its
    elementwise ops run through Python reference kernels), so checking all of them would
    take this file past its time budget; the contract test builds every one on ``meta``.
    """
    chosen, families = set(CPU), set()
    for name in ALL:
        family = get_model_card(name).family
        if name not in chosen and family not in families:
            families.add(family)
            chosen.add(name)
    return sorted(chosen)


META = _meta_variants()

# Isotropic families and how many blocks each model holds, counted from its modules
# (not from feature_info). A family whose feature_info entries all share one width and
# reduction must be listed here.
_BLOCKS = {
    "VisionTransformer": lambda m: len(m.blocks),
    "DistilledVisionTransformer": lambda m: len(m.blocks),
    "CCNN": lambda m: len(m.blocks),
    "ConViT": lambda m: len(m.blocks),
    "ConvMixer": lambda m: len(m.blocks),
    "KAT": lambda m: len(m.blocks),
    "MLPKAN": lambda m: len(m.blocks),
    "MlpMixer": lambda m: len(m.blocks),
    "ParallelViT": lambda m: len(m.blocks),
    "T2TViT": lambda m: len(m.blocks),
    "TransHP": lambda m: len(m.blocks),
    "ViR": lambda m: len(m.blocks),
    "XCiT": lambda m: len(m.blocks),  # the class-attention layers leave patches as they are
    "PlainMamba": lambda m: len(m.layers),
    "WideNet": lambda m: len(m.norms1),  # one shared block, one LayerNorm pair per layer
}


def _size(name: str) -> int:
    return get_model_card(name).img_size


@functools.cache
def _run(name: str) -> tuple[ImageClassifier, torch.Tensor, list[torch.Tensor]]:
    """The model in eval mode, its input, and its full list of intermediates (cached)."""
    size = _size(name)
    gen = torch.Generator().manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES).eval()
    x = torch.randn(2, model.in_chans, size, size, generator=gen)
    with torch.no_grad():
        feats = model.forward_intermediates(x)
    return model, x, feats


def _check_shapes(
    model: ImageClassifier, feats: list[torch.Tensor], size: int, check_sides: bool = True
) -> None:
    assert len(feats) == len(model.feature_info)
    for fi, out in zip(model.feature_info, feats):
        # tokens only from isotropic token models; hierarchical stages are NCHW maps
        assert out.ndim == 4 or (model.isotropic and out.ndim == 3), (
            f"{fi.module}: {out.ndim}-D output (isotropic={model.isotropic})"
        )
        fmap = model.tokens_to_map(out) if out.ndim == 3 else out
        assert fmap.ndim == 4 and fmap.shape[0] == 2
        assert fmap.shape[1] == fi.num_chs, f"{fi.module}: {fmap.shape[1]} ch, not {fi.num_chs}"
        if not check_sides:  # valid-padding stems (Inception) shrink more at full size
            continue
        expected = size / fi.reduction
        for side in fmap.shape[-2:]:
            assert side in (math.floor(expected), math.ceil(expected)), (
                f"{fi.module}: side {side}, declared reduction {fi.reduction} of {size}"
            )


@pytest.mark.parametrize("name", CPU)
def test_one_output_per_entry_with_declared_shape(name):
    model, x, feats = _run(name)
    _check_shapes(model, feats, _size(name))
    # each entry's module runs once and its output is what forward_intermediates returned
    # (unchanged by later in-place ops)
    seen: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(model.feature_info))}
    handles = [
        model.get_submodule(fi.module).register_forward_hook(
            lambda _m, _i, out, i=i: seen[i].append(out.clone())
        )
        for i, fi in enumerate(model.feature_info)
    ]
    try:
        with torch.no_grad():
            model.forward_features(x)
    finally:
        for h in handles:
            h.remove()
    for i, out in enumerate(feats):
        assert len(seen[i]) == 1, f"{model.feature_info[i].module} ran {len(seen[i])} times"
        ref = seen[i][0]
        ref = model.tokens_to_map(ref) if ref.ndim == 3 and out.ndim == 4 else ref
        assert torch.equal(out, ref), f"{model.feature_info[i].module}: output changed"


@pytest.mark.parametrize("name", CPU)
def test_isotropic_models_list_every_block(name):
    model = _run(name)[0]
    info = model.feature_info
    reductions = [fi.reduction for fi in info]
    assert reductions == sorted(reductions), f"reductions not in stage order: {reductions}"
    family = type(model).__name__
    uniform = len({(fi.num_chs, fi.reduction) for fi in info}) == 1
    if family in _BLOCKS:
        assert model.isotropic
        assert uniform
        assert len(info) == _BLOCKS[family](model), "one feature_info entry per block"
        assert len({fi.module for fi in info}) == len(info)
    else:
        assert not model.isotropic
        assert not (uniform and len(info) > 1), (
            f"{family} looks isotropic (every entry {info[0].num_chs} ch at /"
            f"{info[0].reduction}): add it to _BLOCKS and set isotropic = True"
        )


@pytest.mark.parametrize("name", CPU)
def test_indices_select_entries(name):
    model, x, feats = _run(name)
    n = len(feats)
    with torch.no_grad():
        if n >= 2:
            last_two = model.forward_intermediates(x, indices=2)
            assert len(last_two) == 2
            assert all(torch.equal(a, b) for a, b in zip(last_two, feats[-2:]))
        ends = model.forward_intermediates(x, indices=[0, -1])
    assert len(ends) == (2 if n >= 2 else 1)
    assert torch.equal(ends[0], feats[0]) and torch.equal(ends[-1], feats[-1])
    for bad in (0, n + 1, [n], [-n - 1], [0, n + 3], []):
        with pytest.raises(ValueError, match=f"{n} feature_info entries"):
            model.forward_intermediates(x, indices=bad)


def test_resnet_intermediates_match_a_pass_by_hand():
    model, x, feats = _run("resnet_pico")
    with torch.no_grad():
        h = model.stem(x)
        manual = []
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
            h = layer(h)
            manual.append(h)
    assert [tuple(t.shape) for t in feats] == [tuple(t.shape) for t in manual]
    assert all(torch.equal(a, b) for a, b in zip(feats, manual))
    # the last stage is what forward_features returns
    with torch.no_grad():
        assert torch.equal(feats[-1], model.forward_features(x))


@pytest.mark.parametrize("name", ["vit_pico", "deit_pico_distilled"])
def test_vit_intermediates_match_a_pass_by_hand(name):
    model, x, feats = _run(name)
    with torch.no_grad():
        tokens = model.patch_embed(x)
        prefix = [model.cls_token] + ([model.dist_token] if hasattr(model, "dist_token") else [])
        prefix = torch.cat(prefix, dim=1).expand(x.shape[0], -1, -1)
        tokens = torch.cat([prefix, tokens], dim=1) + model.pos_embed
        manual = []
        for block in model.blocks:
            tokens = block(tokens)
            manual.append(tokens)
    assert len(feats) == len(manual) == 6
    for a, b in zip(feats, manual):
        assert a.shape == (2, model.num_prefix_tokens + 64, 128)
        assert torch.equal(a, b)
    # the map of a block output is its patch tokens on the 8 x 8 grid
    grid = model.tokens_to_map(feats[2])
    assert torch.equal(grid[:, :, 0, 1], feats[2][:, model.num_prefix_tokens + 1])


def test_the_pass_stops_after_the_last_requested_entry():
    model, x, feats = _run("vit_pico")
    calls = []
    handle = model.blocks[-1].register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad():
            first = model.forward_intermediates(x, indices=[0, 1])
    finally:
        handle.remove()
    assert calls == []
    assert torch.equal(first[0], feats[0]) and torch.equal(first[1], feats[1])


class _TupleStages(ImageClassifier):
    """Two conv stages; the second returns (map, auxiliary vector) like some blocks do."""

    class _Stage(nn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, 3, 2, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = self.conv(x)
            return y.mean((2, 3)), y

    def __init__(self, second: str = "stage2") -> None:
        super().__init__()
        self.num_classes, self.in_chans, self.num_features = 3, 3, 8
        self.stage1 = nn.Conv2d(3, 4, 3, 2, 1)
        self.stage2 = self._Stage(4, 8)
        self.unused = nn.Identity()
        self.head = nn.Linear(8, 3)
        self.feature_info = [FeatureInfo(4, 2, "stage1"), FeatureInfo(8, 4, second)]
        self.cam_target = "stage1"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.stage2(self.stage1(x))[1]


def test_tuple_outputs_give_the_tensor_with_the_declared_width():
    model = _TupleStages()
    x = torch.randn(2, 3, 16, 16)
    a, b = model.forward_intermediates(x)
    assert a.shape == (2, 4, 8, 8)
    assert torch.equal(b, model.forward_features(x))


def test_a_module_that_does_not_run_is_an_error():
    with pytest.raises(RuntimeError, match="unused"):
        _TupleStages(second="unused").forward_intermediates(torch.randn(1, 3, 16, 16))


@pytest.mark.parametrize("name", META)
def test_meta_intermediates_count_and_channels(name):
    size = _size(name)
    with torch.device("meta"):
        model = create_model(name, num_classes=NUM_CLASSES).eval()
        feats = model.forward_intermediates(torch.empty(2, model.in_chans, size, size))
    _check_shapes(model, feats, size, check_sides=False)
