"""PT2E int8 (torchao, x86 Inductor quantizer) and AdaLog's logarithmic quantizer."""

from __future__ import annotations

import pytest
import torch

from archbench.compress.adalog import AdaLogQuantizer, adalog_quantize, reparameterize_bias
from archbench.compress.measure import file_size_bytes
from archbench.compress.quantize import check_scheme, quantize_pt2e
from archbench.models import create_model


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_pt2e_int8_runs_onednn_kernels_and_agrees_with_fp32():
    torch.manual_seed(0)
    model = create_model("resnet_pico", num_classes=4, img_size=16).eval()
    calibration = [_images(16, s) for s in range(4)]
    q, info = quantize_pt2e(model, _images(1, 9), calibration, scheme="int8", backend="lower")
    code = q.graph.code
    assert "onednn.qconv" in code and "onednn.qlinear" in code  # real int8 operators
    assert info["dynamic_batch"]
    x = _images(8, 99)  # a batch size not seen during export
    with torch.no_grad():
        ref, out = model(x), q(x)
    # tolerance: 8-bit activations (7-bit without VNNI) through 10 layers; logits of this
    # untrained model span about +-0.2, and per-tensor int8 rounding keeps the error within
    # 5% of that range, and the predicted class the same
    span = ref.abs().max().item()
    assert (out - ref).abs().max().item() < 0.05 * span
    assert torch.equal(out.argmax(1), ref.argmax(1))
    # the file holds int8 weights: about a quarter of the float file
    assert file_size_bytes(q) < 0.35 * file_size_bytes(model)


def test_schemes_without_a_kernel_are_refused_before_work():
    with pytest.raises(ValueError, match=r"unknown quantization scheme 'int4'.*fake"):
        check_scheme("int4")
    with pytest.raises(ValueError, match=r"unknown backend"):
        check_scheme("int8", "tensorrt")
    check_scheme("fake")  # simulated: always available


def test_adalog_quantizer_reproduces_a_hand_computed_example():
    # 3 bits: codes 0..7; r = 37, q = 20, so the base is 2^(20/37); table step 1/14.
    x = torch.tensor([1.0, 0.5, 0.3, 0.01])
    # codes: round(-log2(x) * 37 / 20): 0 -> 0; 1.85 -> 2; 1.737*1.85 = 3.213 -> 3;
    #        6.644*1.85 = 12.29 -> 12 >= 8: below the grid, dequantized to 0
    # x_hat = 2^-floor(c*20/37) * round(14 * 2^-((c*20 mod 37)/37)) / 14:
    #   c=0: 1 * 14/14 = 1;  c=2: 40 -> 2^-1 * round(14 * 2^(-3/37))/14 = 0.5 * 13/14
    #   c=3: 60 -> 2^-1 * round(14 * 2^(-23/37))/14 = 0.5 * round(9.10)/14 = 0.5 * 9/14
    expected = torch.tensor([1.0, 0.5 * 13 / 14, 0.5 * 9 / 14, 0.0])
    quant = AdaLogQuantizer(bits=3, q=20)
    assert torch.allclose(quant(x), expected, atol=1e-7)
    # q = r: the base is 2, the plain log2 quantizer: 0.3 -> 2^-2, 0.01 -> 2^-7
    assert torch.allclose(AdaLogQuantizer(bits=3, q=37)(x), torch.tensor([1, 0.5, 0.25, 2**-7]))
    # a scale stretches the grid
    assert torch.allclose(AdaLogQuantizer(bits=3, q=20, scale=2.0).fake(2 * x), 2 * expected)


def test_bias_reparameterization_is_exact():
    torch.manual_seed(0)
    fc = torch.nn.Linear(6, 3)
    y = torch.rand(5, 6)
    ref = fc(y - 0.17)
    reparameterize_bias(fc, 0.17)
    assert torch.allclose(fc(y), ref, atol=1e-6)


def test_adalog_on_a_vit_searches_and_only_quantizes_its_activations():
    torch.manual_seed(0)
    model = create_model("vit_pico", depth=1, num_classes=4, img_size=16).eval()
    q, info = adalog_quantize(model, [_images(2, 0)], bits=4)
    assert set(info["layers"]) == {"blocks.0.attn:softmax", "blocks.0.mlp:gelu"}
    assert all(1 <= layer["q"] <= 140 for layer in info["layers"].values())
    x = _images(3, 5)
    with torch.no_grad():
        ref = model(x)
        quantized = q(x)
        for m in q.modules():  # with quantizers off, the rewritten model is the original
            if isinstance(m, AdaLogQuantizer):
                m.enabled = False
        plain = q(x)
    assert torch.allclose(plain, ref, atol=1e-5)
    assert not torch.allclose(quantized, ref, atol=1e-5)
    assert torch.nn.functional.cosine_similarity(quantized, ref).mean() > 0.9
    # the post-softmax search picked the q with the least attention-output error on the
    # calibration batch, recomputed here by brute force over the same candidates
    attn = q.blocks[0].attn
    seen = []
    handle = attn.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        q(_images(2, 0))
        handle.remove()
        probs, v = attn.probs_and_values(seen[0])
        errors = {
            c: ((attn.quant.fake(probs, q=c) @ v - probs @ v) ** 2).mean().item()
            for c in range(10, 139, 4)
        }
    assert (
        attn.quant.q == info["layers"]["blocks.0.attn:softmax"]["q"] == min(errors, key=errors.get)
    )
    # the searched base beats a coarse fixed one, and more bits bring the logits closer
    coarse, _ = adalog_quantize(model, [_images(2, 0)], bits=4)
    for m in coarse.modules():
        if isinstance(m, AdaLogQuantizer):
            m.q = 138
    q6, _ = adalog_quantize(model, [_images(2, 0)], bits=6)
    with torch.no_grad():
        err4 = (quantized - ref).abs().mean()
        assert err4 < (coarse(x) - ref).abs().mean()
        assert (q6(x) - ref).abs().mean() < err4
