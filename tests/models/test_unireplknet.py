"""UniRepLKNet: dilated reparam block and whole-block fusion give the same outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from archbench.models import create_model, get_model_card
from archbench.models.unireplknet import DilatedReparamBlock, UniRepLKNetBlock


def _randomize(module: nn.Module) -> None:
    """Non-trivial BN statistics, GRN and layer-scale values so that every fold matters."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        for name, p in module.named_parameters():
            if name.endswith(("grn.gamma", "grn.beta", "gamma")):
                p.copy_(torch.rand(p.shape, generator=g) - 0.5)


@pytest.mark.parametrize("k", [5, 7, 9, 11, 13, 15, 17])
def test_dilated_reparam_block_fuses_to_one_kernel(k):
    torch.manual_seed(0)
    block = DilatedReparamBlock(6, k)
    _randomize(block)
    block.eval()
    x = torch.randn(2, 6, 20, 20)
    ref = block(x)
    block.reparameterize()
    assert isinstance(block.lk_origin, nn.Conv2d) and block.lk_origin.kernel_size == (k, k)
    assert not hasattr(block, "dil_convs")
    assert torch.allclose(block(x), ref, atol=1e-5)


def test_dilated_reparam_block_rejects_unknown_kernel():
    with pytest.raises(ValueError, match="kernel_size"):
        DilatedReparamBlock(4, 6)


@pytest.mark.parametrize("k", [3, 13])
def test_block_reparameterize_same_output(k):
    torch.manual_seed(0)
    block = UniRepLKNetBlock(8, k, layer_scale_init_value=1e-6)
    _randomize(block)
    block.eval()
    x = torch.randn(2, 8, 15, 15)
    ref = block(x)
    block.reparameterize()
    assert block.gamma is None and block.grn.beta is None
    assert isinstance(block.norm, nn.Identity) and isinstance(block.norm2, nn.Identity)
    assert torch.allclose(block(x), ref, atol=1e-5)


def test_pico_reparameterize_same_output():
    torch.manual_seed(0)
    model = create_model("unireplknet_pico", num_classes=10)
    _randomize(model)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model.reparameterize()
        out = model(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["unireplknet_t", "unireplknet_s"])
def test_deploy_params_match_release(name):
    """The README counts the reparameterized model (rounded to whole millions)."""
    with torch.device("meta"):
        model = create_model(name)
        model.reparameterize()
    deploy = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(deploy - get_model_card(name).extra["params_m_deploy"]) < 0.5


def test_t_alternates_large_and_small_kernels_in_stage3():
    with torch.device("meta"):
        model = create_model("unireplknet_t")
    kinds = [isinstance(b.dwconv, DilatedReparamBlock) for b in model.stages[2]]
    assert kinds == [True, False] * 9
    assert all(b.dwconv.kernel_size == 13 for b in model.stages[3])


def test_bad_kernel_sizes():
    with pytest.raises(ValueError, match="one size per block"):
        create_model("unireplknet_pico", kernel_sizes=((3,), (7,), (7,), (3,)))
    with pytest.raises(ValueError, match="default kernel sizes"):
        create_model("unireplknet_t", depths=(1, 1, 1, 1))
