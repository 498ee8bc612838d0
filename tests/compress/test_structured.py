"""Structured pruning with Torch-Pruning: smaller models that keep the archbench contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from archbench.compress.measure import file_size_bytes
from archbench.compress.structured import PruneError, apply_structure, prune_structured
from archbench.models import create_model

KW = {"num_classes": 4, "img_size": 16}


def _x(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return create_model("resnet_pico", **KW).eval()


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return create_model("vit_pico", depth=2, **KW).eval()


def test_zero_ratio_is_the_original_exactly(resnet):
    pruned, info = prune_structured(resnet, _x(1), 0.0)
    assert pruned is not resnet
    sd, ref = pruned.state_dict(), resnet.state_dict()
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in sd)
    with torch.no_grad():
        assert torch.equal(pruned(_x()), resnet(_x()))
    assert info["structure"]["shapes"] == {}


def test_cnn_prune_is_smaller_keeps_shapes_and_reloads(resnet):
    pruned, info = prune_structured(resnet, _x(1), 0.5)
    assert _params(pruned) < 0.5 * _params(resnet)  # 50% of channels: about a quarter left
    assert file_size_bytes(pruned) < 0.5 * file_size_bytes(resnet)
    x = _x()
    with torch.no_grad():
        assert pruned(x).shape == resnet(x).shape == (2, 4)
        feats = pruned.forward_intermediates(x)
        assert [f.shape[1] for f in feats] == [f.num_chs for f in pruned.feature_info]
        assert [f.shape[-1] for f in feats] == [
            f.shape[-1] for f in resnet.forward_intermediates(x)
        ]
        pooled = pruned.forward_head(pruned.forward_features(x), pre_logits=True)
        assert pooled.shape[-1] == pruned.num_features < resnet.num_features
    # every conv kept about half its output channels (the classifier none)
    convs = [(a, b) for a, b in zip(resnet.modules(), pruned.modules()) if isinstance(a, nn.Conv2d)]
    assert all(b.out_channels == a.out_channels - int(a.out_channels * 0.5) for a, b in convs)
    # a fresh model given the recorded structure takes the pruned weights and agrees exactly
    rebuilt = apply_structure(create_model("resnet_pico", **KW), info["structure"]).eval()
    rebuilt.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(x), pruned(x))


def test_vit_heads_are_removed_whole(vit):
    pruned, info = prune_structured(vit, _x(1), 0.25)
    attn0, ref0 = pruned.blocks[0].attn, vit.blocks[0].attn
    assert ref0.num_heads == 4 and attn0.num_heads == 3  # one head of four removed
    assert attn0.head_dim == ref0.head_dim  # head width (and the 1/sqrt(d) scale) kept
    assert attn0.qkv.out_features == 3 * attn0.num_heads * attn0.head_dim
    assert info["heads"] == {"blocks.0.attn": 3, "blocks.1.attn": 3}
    assert _params(pruned) < _params(vit)
    with torch.no_grad():
        assert pruned(_x()).shape == (2, 4)
    rebuilt = apply_structure(create_model("vit_pico", depth=2, **KW), info["structure"]).eval()
    rebuilt.load_state_dict(pruned.state_dict())
    assert rebuilt.blocks[1].attn.num_heads == 3
    with torch.no_grad():
        assert torch.equal(rebuilt(_x()), pruned(_x()))


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, float("nan"), "half"])
def test_ratio_outside_0_1_is_refused(resnet, ratio):
    with pytest.raises(ValueError, match=r"ratio must"):
        prune_structured(resnet, _x(1), ratio)


class _Unprunable(nn.Module):
    """A layer that reshapes its output to a hard-coded width: pruning its conv breaks it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(16, 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return self.conv(x).reshape(b, 16, h * w).reshape(b, 16, h, w)


class _Net(nn.Module):
    num_classes = 4

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.odd = _Unprunable()
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.odd(self.conv(x)).mean((2, 3), keepdim=True)).flatten(1)


def test_a_layer_the_graph_cannot_handle_is_named_and_can_be_ignored():
    net = _Net().eval()
    with pytest.raises(PruneError, match=r"odd.*ignore=odd") as err:
        prune_structured(net, _x(1), 0.5)
    assert err.value.layer == "odd"
    pruned, info = prune_structured(net, _x(1), 0.5, ignore="odd")
    assert info["ignored"] == ["odd"] and pruned.odd.conv.out_channels == 16
    assert pruned.conv.out_channels == 8 == pruned.odd.conv.in_channels  # the rest is pruned
    with torch.no_grad():
        assert pruned(_x()).shape == (2, 4)
    with pytest.raises(ValueError, match=r"ignore names module.*nosuch"):
        prune_structured(net, _x(1), 0.5, ignore="nosuch")
