"""CCNN: the release's architecture counted by hand, the S4-style block, any resolution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archbench.layers import ckconv
from archbench.layers.fftconv import fft_conv
from archbench.models import create_model


def _count_by_hand(width: int, depth: int, kernel_hidden: int, in_chans: int, classes: int) -> int:
    """Parameters of CCNN_{depth,width} as the release builds it (ckconv/nn, models/)."""
    h = kernel_hidden

    def magnet(out: int) -> int:
        filters = 4 * (h * 2 + h * 2 + (2 * h + h))  # mu, gamma, Linear(2, h) per filter
        hidden = 3 * (h * h + h)
        return filters + hidden + h * out + out

    def sep_flexconv(cin: int, cout: int) -> int:
        # kernel net, depthwise bias, 1x1 channel mixer, Gaussian mask widths (2)
        return magnet(cin) + cin + cin * cout + cout + 2

    stem = sep_flexconv(in_chans, width) + 2 * width
    block = 2 * width + sep_flexconv(width, width) + width * width + width
    return stem + depth * block + 2 * width + width * classes + classes


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name, width, depth, hidden, paper_m",
    [("ccnn_4x140", 140, 4, 32, 0.2), ("ccnn_6x380", 380, 6, 64, 2.0)],
)
def test_counts_match_the_release_architecture(name, width, depth, hidden, paper_m):
    for classes in (10, 1000):
        with torch.device("meta"):
            model = create_model(name, num_classes=classes)
        assert _params(model) == _count_by_hand(width, depth, hidden, 3, classes)
    # the paper's rounded CIFAR-10 sizes (0.2M and 2M)
    ten = _count_by_hand(width, depth, hidden, 3, 10) / 1e6
    assert round(ten, 1) == paper_m


def _randomise_norms(model: torch.nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine terms (fresh ones are near identity)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()


def test_block_is_the_prenorm_s4_block():
    torch.manual_seed(0)
    model = create_model("ccnn_pico", num_classes=5).eval()
    _randomise_norms(model)
    block = model.blocks[0]
    x = torch.randn(2, 32, 12, 12)
    h = block.conv(block.norm(x))
    ref = x + F.gelu(block.linear(F.gelu(h)))
    torch.testing.assert_close(block(x), ref)


def test_forward_features_is_stem_blocks_norm():
    torch.manual_seed(1)
    model = create_model("ccnn_pico", num_classes=5).eval()
    _randomise_norms(model)
    x = torch.randn(2, 3, 16, 16)
    stem = F.gelu(model.stem[1](model.stem[0](x)))
    ref = model.norm(model.blocks[1](model.blocks[0](stem)))
    torch.testing.assert_close(model.forward_features(x), ref)
    logits = model.head(ref.mean((2, 3)))
    torch.testing.assert_close(model(x), logits)


def test_one_model_takes_any_resolution():
    torch.manual_seed(2)
    model = create_model("ccnn_pico", num_classes=4).eval()
    with torch.no_grad():
        for size in [(8, 8), (32, 32), (45, 27)]:
            out = model.forward_features(torch.randn(1, 3, *size))
            assert out.shape == (1, 32, *size)
            assert model(torch.randn(1, 3, *size)).shape == (1, 4)


def test_kernels_start_small_and_grow_with_the_mask():
    model = create_model("ccnn_pico")
    conv = model.blocks[0].conv
    assert conv.kernel().shape[-2:] == (5, 5)
    with torch.no_grad():
        conv.mask_width.fill_(0.3)  # reaches the 0.1 threshold at 0.64: 21 of 33 positions
    assert conv.kernel().shape[-2:] == (21, 21)


def test_pico_fft_path_agrees_with_the_spatial_convolutions(monkeypatch):
    calls = []
    monkeypatch.setattr(ckconv, "fft_conv", lambda *a, **k: calls.append(1) or fft_conv(*a, **k))
    torch.manual_seed(3)
    model = create_model("ccnn_pico", num_classes=4).eval()
    _randomise_norms(model)
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "mask_width"):
                m.mask_width.fill_(0.3)  # 21 x 21 kernels: above pico's FFT threshold of 7
    x = torch.randn(2, 3, 20, 20)
    with torch.no_grad():
        fft_out = model(x)
        assert len(calls) == 3  # the stem and both blocks
        for m in model.modules():
            if hasattr(m, "fft_threshold"):
                m.fft_threshold = None
        torch.testing.assert_close(fft_out, model(x), atol=1e-4, rtol=1e-3)


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="width and depth"):
        create_model("ccnn_pico", depth=0)
    with pytest.raises(ValueError, match="block_drop_rate"):
        create_model("ccnn_pico", block_drop_rate=1.5)
    with pytest.raises(ValueError, match="kernel_size must be a positive odd"):
        create_model("ccnn_pico", kernel_size=32)
