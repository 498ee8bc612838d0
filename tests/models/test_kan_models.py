"""What is special about the KAN families: matched budgets, GR-KAN blocks, MoE routing."""

from __future__ import annotations

import pytest
import torch

from archbench.layers.kan import BottleneckKANConv2d, KANConv2d, KANLinear
from archbench.layers.kan_basis import GroupRationalBasis
from archbench.models import create_model


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_kan_mlp_and_mlp_pico_are_parameter_matched():
    kan = create_model("kan_mlp_pico", num_classes=10)
    mlp = create_model("mlp_pico", num_classes=10)
    assert abs(_params(kan) / _params(mlp) - 1) < 0.01
    assert all(isinstance(m, KANLinear) for m in kan.trunk.layers)
    assert isinstance(kan.head, KANLinear) and isinstance(mlp.head, torch.nn.Linear)
    assert kan.model_card.kind == "kan" and mlp.model_card.kind == "mlp"


def test_flat_models_scale_by_width_and_basis():
    small = create_model("kan_mlp_pico", hidden=(16,), num_classes=10)
    big = create_model("kan_mlp_pico", hidden=(64,), num_classes=10)
    assert _params(big) > 3 * _params(small)
    cheb = create_model("kan_mlp_pico", basis="chebyshev", basis_opts={"degree": 2})
    assert cheb.trunk.layers[0].basis.n_basis == 3
    with pytest.raises(ValueError, match="layer"):
        create_model("mlp_pico", layer="cnn")
    with pytest.raises(ValueError, match="img_size"):
        create_model("mlp_pico")(torch.randn(1, 3, 28, 28))


def test_kan_convnets_use_kan_convolutions():
    vgg = create_model("kan_convnet_pico", num_classes=10)
    assert sum(isinstance(m, KANConv2d) for m in vgg.modules()) == 3
    bott = create_model("kan_convnet_bottleneck_pico", num_classes=10)
    assert sum(isinstance(m, BottleneckKANConv2d) for m in bott.modules()) == 3
    res = create_model("kan_resnet_pico", num_classes=10)
    assert not any(isinstance(m, torch.nn.Conv2d) for m in res.modules())
    assert res(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_kat_mlps_are_group_rational_kans():
    model = create_model("kat_pico", num_classes=10)
    blk = model.blocks[0].mlp
    assert isinstance(blk.fc1.basis, GroupRationalBasis) and blk.fc1.basis.init == "identity"
    assert blk.fc2.basis.init == "swish" and blk.fc1.base_weight is None
    # with identity initial rationals and the first layer's rational at identity, fc1 is linear
    x = torch.randn(3, 64)
    torch.testing.assert_close(blk.fc1(x), x @ blk.fc1.weight[..., 0].T + blk.fc1.bias)
    rational_params = sum(
        m.numerator.numel() + m.denominator.numel()
        for m in model.modules()
        if isinstance(m, GroupRationalBasis)
    )
    # blocks x layers x (one shared numerator of 6 + a denominator of 4 per group)
    assert rational_params == 4 * 2 * (6 + 8 * 4)


def test_mlp_kan_routes_top_k_experts():
    model = create_model("mlp_kan_pico", num_classes=10)
    moe = model.blocks[0].mlp
    x = torch.randn(2, 5, 64)
    gates = moe.gates(x)
    assert ((gates > 0).sum(-1) == moe.top_k).all()
    torch.testing.assert_close(gates.sum(-1), torch.ones(2, 5))
    # output equals the gate-weighted sum of the selected experts
    expected = sum(gates[..., i : i + 1] * e(x) for i, e in enumerate(moe.experts))
    torch.testing.assert_close(moe(x), expected)
    kinds = [type(e).__name__ for e in moe.experts]
    assert kinds.count("Mlp") == 4 and kinds.count("KANExpert") == 4  # the release's 4 + 4
    # the release has no load-balancing loss: off by default, an option
    model.train()
    model(torch.randn(2, 3, 32, 32))
    assert model.aux_loss() is None
    balanced = create_model("mlp_kan_pico", num_classes=10, aux_loss_weight=0.01).train()
    balanced(torch.randn(2, 3, 32, 32))
    assert balanced.aux_loss() > 0


def test_mlp_kan_experts_follow_the_release():
    with torch.device("meta"):
        model = create_model("mlp_kan_deit_tiny")
    moe = model.blocks[0].mlp
    assert moe.router.bias is None
    mlp, kan = moe.experts[0], moe.experts[4]
    assert mlp.fc1.out_features == 192  # the release's ffn_dim, not 4 * dim
    assert kan.fc1.out_features == 96 and kan.fc2.out_features == 192
    assert kan.fc1.base_weight is None and kan.fc2.base_weight is None  # no SiLU branch


def test_mlp_kan_kan_expert_is_layernorm_switch_basis_linear():
    torch.manual_seed(0)
    model = create_model("mlp_kan_pico", num_classes=10)
    kan = model.blocks[0].mlp.experts[-1]
    x = torch.randn(3, 64)

    def faster_kan_layer(t, norm, layer):
        t = torch.nn.functional.layer_norm(t, t.shape[-1:], norm.weight, norm.bias)
        grid = torch.linspace(-2.0, 2.0, 8)
        basis = 1 - torch.tanh((t[..., None] - grid) / 0.33) ** 2  # (n, in, 8)
        return basis.flatten(1) @ layer.weight.flatten(1).T

    ref = faster_kan_layer(faster_kan_layer(x, kan.norm1, kan.fc1), kan.norm2, kan.fc2)
    torch.testing.assert_close(kan(x), ref, rtol=1e-4, atol=1e-5)
