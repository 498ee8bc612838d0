"""AdaLog: the adaptive logarithm-base quantizer for post-softmax and post-GELU activations.

Wu et al., *AdaLog: Post-Training Quantization for Vision Transformers with Adaptive
Logarithm Quantizer* (ECCV 2024). Post-softmax and post-GELU activations follow
power-law-like distributions that uniform quantizers handle badly. AdaLog quantizes them
on a logarithmic grid whose base is searched: with ``r = 37`` fixed and an integer ``q``,

    x_int = clamp(round(-log2(x / s) * r / q), 0, 2^b - 1)   (x_int >= 2^b -> 0)
    x_hat = s * 2^(-floor(x_int * q / r)) * T[(x_int * q) mod r]

where ``T[j] = round(2^(-j/r) * (2^(b+1) - 2)) / (2^(b+1) - 2)`` is a small table, so
dequantization is a shift and a lookup (hardware-friendly); the base is ``2^(q/r)``.
Post-GELU activations can be negative (GELU's minimum is about -0.17), so they are
shifted by a constant before the logarithm and the shift is folded into the next linear
layer's bias (*bias reparameterization*: ``fc2(y - c) = fc2(y) - c * W.sum(1)``). The
hyper-parameters are searched on calibration data by the output similarity of the layer
that consumes the activation: ``q`` alone for post-softmax (scale fixed to 1), ``q`` and
the scale jointly for post-GELU with a progressive coarse-to-fine search (the paper's Fast
Progressive Combining Search: keep the best candidates, refine the scale around them).

Deviations, stated: only the activations AdaLog is about are quantized (post-softmax in
every archbench ``Attention``, post-GELU in every ``Mlp``); weights and the other
activations stay in float, where the paper also quantizes them with uniform quantizers and
block reconstruction. Similarity is the negative mean squared error of the consuming layer's output
(the official code offers cosine too, which ignores scale), searched per layer in network
order. No int8
kernel runs the logarithmic grid, so the result is simulated (fake-quantized).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from archbench.layers.attention import Attention
from archbench.layers.mlp import Mlp

from .registry import CompressContext, CompressResult, register_compressor

__all__ = [
    "GELU_SHIFT",
    "AdaLogAttention",
    "AdaLogGELU",
    "AdaLogQuantizer",
    "adalog_quantize",
]

R = 37  # the fixed denominator of the base exponent (official release)
GELU_SHIFT = 0.17  # a little above -min GELU(x) = 0.16997, so x + shift >= 0


class AdaLogQuantizer(nn.Module):
    """Fake-quantize non-negative activations on an adaptive logarithmic grid (see module)."""

    def __init__(self, bits: int = 4, q: int = R, scale: float = 1.0, r: int = R) -> None:
        super().__init__()
        if not 2 <= bits <= 8:
            raise ValueError(f"AdaLog bits must be in 2..8, got {bits}")
        if q < 1 or r < 1:
            raise ValueError(f"q and r must be positive integers, got q={q}, r={r}")
        self.bits, self.r = bits, r
        self.q = int(q)
        self.scale = float(scale)
        self.enabled = True

    @property
    def levels(self) -> int:
        return 2**self.bits

    def table(self, device: torch.device | None = None) -> torch.Tensor:
        """``T[j] = round(2^(-j/r) * (2^(b+1) - 2)) / (2^(b+1) - 2)`` for j < r."""
        step = 2 ** (self.bits + 1) - 2
        j = torch.arange(self.r, dtype=torch.float64, device=device)
        return (torch.round(2.0 ** (-j / self.r) * step) / step).float()

    def quantize(self, x: torch.Tensor, q: int | None = None, scale: float | None = None):
        """Integer codes and the mask of values below the grid (they dequantize to 0)."""
        q = self.q if q is None else q
        s = self.scale if scale is None else scale
        scaled = (x / s).clamp(min=1e-15, max=1.0)
        codes = torch.round(-torch.log2(scaled) * self.r / q)
        keep = codes < self.levels
        return codes.clamp(0, self.levels - 1), keep

    def dequantize(self, codes: torch.Tensor, keep: torch.Tensor, q=None, scale=None):
        q = self.q if q is None else q
        s = self.scale if scale is None else scale
        exponent = codes * q
        shift = torch.floor(exponent / self.r)
        index = torch.remainder(exponent, self.r).round().long()
        return s * torch.pow(2.0, -shift) * self.table(codes.device)[index] * keep

    def fake(self, x: torch.Tensor, q: int | None = None, scale: float | None = None):
        """Quantize and dequantize (with candidate ``q``/``scale`` during the search)."""
        codes, keep = self.quantize(x, q, scale)
        return self.dequantize(codes, keep, q, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fake(x) if self.enabled else x

    def extra_repr(self) -> str:
        return f"bits={self.bits}, q={self.q}, r={self.r}, base=2^({self.q}/{self.r})"


class AdaLogAttention(nn.Module):
    """An archbench ``Attention`` with explicit softmax whose probabilities go through
    :class:`AdaLogQuantizer` (scale 1: softmax outputs lie in [0, 1])."""

    def __init__(self, attn: Attention, bits: int) -> None:
        super().__init__()
        self.attn = attn
        self.quant = AdaLogQuantizer(bits)
        self.capture: list | None = None

    def probs_and_values(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None):
        q, k, v = self.attn.qkv_heads(x)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if attn_bias is not None:
            scores = scores + attn_bias
        return scores.softmax(-1), v

    def finish(self, out: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        b, n, _ = shape
        out = out.transpose(1, 2).reshape(b, n, self.attn.num_heads * self.attn.head_dim)
        return self.attn.proj_drop(self.attn.proj(out))

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        probs, v = self.probs_and_values(x, attn_bias)
        if self.capture is not None:
            self.capture.append((probs.detach(), v.detach()))
        return self.finish(self.quant(probs) @ v, x.shape)


class AdaLogGELU(nn.Module):
    """GELU followed by AdaLog on ``GELU(x) + shift``; the shift is folded into the next
    layer's bias by :func:`reparameterize_bias`, so the output is ``quant(GELU(x) + shift)``."""

    def __init__(self, act: nn.Module, bits: int, shift: float = GELU_SHIFT) -> None:
        super().__init__()
        self.act = act
        self.shift = shift
        self.quant = AdaLogQuantizer(bits)
        self.capture: list | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(x) + self.shift
        if self.capture is not None:
            self.capture.append(y.detach())
        return self.quant(y)


def reparameterize_bias(fc: nn.Linear, shift: float) -> None:
    """Fold a constant input shift into ``fc``: ``fc(y - c) == fc'(y)`` with
    ``b' = b - c * W.sum(1)`` (adds a bias when ``fc`` has none)."""
    with torch.no_grad():
        delta = shift * fc.weight.sum(dim=1)
        if fc.bias is None:
            fc.bias = nn.Parameter(-delta)
        else:
            fc.bias.sub_(delta)


def _similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Negative mean squared error (cosine alone ignores scale: a grid that maps every
    probability to one value scores a perfect cosine)."""
    return -F.mse_loss(b.double(), a.double()).item()


def _search_softmax(layer: AdaLogAttention, q_range: range) -> dict[str, Any]:
    """Best ``q`` for post-softmax: the attention output (probs @ v) most similar to fp."""
    best = (-math.inf, layer.quant.q)
    refs = [p @ v for p, v in layer.capture]
    for q in q_range:
        sim = sum(
            _similarity(r, layer.quant.fake(p, q=q) @ v) for r, (p, v) in zip(refs, layer.capture)
        )
        best = max(best, (sim, q))
    layer.quant.q = best[1]
    return {"q": best[1], "base": 2 ** (best[1] / R), "similarity": best[0] / len(layer.capture)}


def _search_gelu(
    layer: AdaLogGELU, fc: nn.Linear, q_range: range, width: int = 2, steps: int = 2
) -> dict[str, Any]:
    """Joint (q, scale) search for post-GELU by the similarity of ``fc``'s output, coarse
    to fine: a grid of scales around the calibration maximum, then ``steps`` rounds that
    keep the ``width`` best pairs and refine each scale on a finer grid around it."""
    ys = [y.reshape(-1, y.shape[-1])[:512] for y in layer.capture]  # a sample of tokens
    refs = [F.linear(y - layer.shift, fc.weight, fc.bias) for y in ys]
    top = max(y.max().item() for y in ys)
    w_out = fc.weight

    def score(q: int, s: float) -> float:
        total = 0.0
        for y, ref in zip(ys, refs):
            out = F.linear(layer.quant.fake(y, q=q, scale=s) - layer.shift, w_out, fc.bias)
            total += _similarity(ref, out)
        return total / len(ys)

    delta = top / 8
    candidates = [(q, top * f) for q in q_range[:: max(1, len(q_range) // 8)] for f in (0.5, 1.0)]
    scored = sorted(((score(q, s), q, s) for q, s in candidates), reverse=True)
    for _ in range(steps):
        keep = scored[:width]
        new = set()
        for _, q, s in keep:
            for dq in (-1, 0, 1):
                for ds in (-0.5, 0.0, 0.5):
                    nq, ns = q + dq, s + ds * delta
                    if nq >= 1 and ns > 0:
                        new.add((nq, round(ns, 9)))
        scored = sorted(((score(q, s), q, s) for q, s in new), reverse=True)
        delta /= 4
    sim, q, s = scored[0]
    layer.quant.q, layer.quant.scale = q, s
    return {"q": q, "scale": s, "base": 2 ** (q / R), "similarity": sim}


def adalog_quantize(
    model: nn.Module,
    calibration: list[torch.Tensor],
    bits: int = 4,
    softmax: bool = True,
    gelu: bool = True,
    q_min: int = 10,
    q_max: int = 138,
) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` with AdaLog on its post-softmax and post-GELU activations, the
    GELU shift folded into the next bias, and every quantizer's hyper-parameters searched
    on ``calibration`` (layer by layer, in network order, earlier layers quantized)."""
    if not calibration:
        raise ValueError("AdaLog needs calibration batches; pass --data")
    if not softmax and not gelu:
        raise ValueError("nothing to quantize: set softmax=true and/or gelu=true")
    model = copy.deepcopy(model).eval()
    attn_layers: list[tuple[str, AdaLogAttention]] = []
    gelu_layers: list[tuple[str, AdaLogGELU, nn.Linear]] = []
    for name, m in list(model.named_modules()):
        for child_name, child in list(m.named_children()):
            path = f"{name}.{child_name}".lstrip(".")
            if (
                softmax
                and isinstance(child, Attention)
                and type(child).forward is Attention.forward
            ):
                wrapped = AdaLogAttention(child, bits)
                setattr(m, child_name, wrapped)
                attn_layers.append((path, wrapped))
        if gelu and isinstance(m, Mlp) and isinstance(m.act, nn.GELU):
            wrapped = AdaLogGELU(m.act, bits)
            m.act = wrapped
            reparameterize_bias(m.fc2, wrapped.shift)
            gelu_layers.append((name, wrapped, m.fc2))
    if not attn_layers and not gelu_layers:
        raise ValueError(
            "AdaLog found no post-softmax (archbench Attention) or post-GELU (Mlp with GELU) "
            "activation in this model; it is made for vision transformers"
        )
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    layers = sorted(
        [(n, "softmax", a, None) for n, a in attn_layers]
        + [(n, "gelu", g, fc) for n, g, fc in gelu_layers],
        key=lambda t: order.get(t[0], 0),
    )
    q_range = range(q_min, q_max + 1, 4)
    report = {}
    for _, _, layer, _ in layers:
        layer.quant.enabled = False
    for name, kind, layer, fc in layers:
        layer.capture = []
        with torch.no_grad():
            for x in calibration:
                model(x)
            result = (
                _search_softmax(layer, q_range)
                if kind == "softmax"
                else _search_gelu(layer, fc, q_range)
            )
        layer.capture = None
        layer.quant.enabled = True
        report[f"{name}:{kind}"] = result
    return model, {"bits": bits, "r": R, "layers": report}


def _check_args(bits: int = 4, softmax: bool = True, gelu: bool = True, **_: Any) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"AdaLog bits must be an integer in 2..8, got {bits!r}")
    if not softmax and not gelu:
        raise ValueError("nothing to quantize: set softmax=true and/or gelu=true")


@register_compressor("adalog", check=_check_args)
def adalog(
    model: nn.Module,
    ctx: CompressContext,
    bits: int = 4,
    softmax: bool = True,
    gelu: bool = True,
    calib_batches: int = 2,
) -> CompressResult:
    """AdaLog post-training quantization of post-softmax and post-GELU activations
    (simulated: no kernel runs the logarithmic grid)."""
    calibration = [b.to(ctx.device) for b in ctx.calibration_batches(max(1, calib_batches))]
    quantized, info = adalog_quantize(model, calibration, bits=bits, softmax=softmax, gelu=gelu)
    info["runs"] = "simulated (fake-quantized activations, float kernels)"
    return CompressResult(model=quantized, simulated=True, info=info)
