"""timm state-dict names load into archbench's families strictly, and map back unchanged.

Each expected state dict below is written out from timm's module tree
(timm/models/resnet.py, convnext.py, vision_transformer.py, mambaout.py, mlp_mixer.py,
metaformer.py, regnet.py, res2net.py, resnest.py, cspnet.py, vovnet.py, convmixer.py,
convit.py, inception_next.py, xcit.py, crossvit.py, byobnet.py, inception_v3.py,
inception_resnet_v2.py, nasnet.py, sknet.py, vgg.py) for a small config, names
and shapes by hand, independently of archbench's mapping code.
"""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from archbench.models import create_model
from archbench.models.timm_names import from_timm, to_timm

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{k}": (() if k == "num_batches_tracked" else (c,)) for k in BN}


def timm_resnet_basic(attn: str | None) -> dict[str, tuple[int, ...]]:
    """timm ResNet with BasicBlocks, one per stage, widths 16-128, a 3x3 stem conv1."""
    names: dict[str, tuple[int, ...]] = {"conv1.weight": (16, 3, 3, 3), **_bn("bn1", 16)}
    cin = 16
    eca_k = {16: 3, 32: 3, 64: 3, 128: 5}  # ECA-Net: k = odd(|log2(C) / 2 + 1 / 2|)
    for i, c in enumerate((16, 32, 64, 128), start=1):
        b = f"layer{i}.0"
        names[f"{b}.conv1.weight"] = (c, cin, 3, 3)
        names.update(_bn(f"{b}.bn1", c))
        names[f"{b}.conv2.weight"] = (c, c, 3, 3)
        names.update(_bn(f"{b}.bn2", c))
        if attn == "se":  # timm SEModule: 1x1 convs with bias, reduction 16
            names[f"{b}.se.fc1.weight"] = (c // 16, c, 1, 1)
            names[f"{b}.se.fc1.bias"] = (c // 16,)
            names[f"{b}.se.fc2.weight"] = (c, c // 16, 1, 1)
            names[f"{b}.se.fc2.bias"] = (c,)
        elif attn == "eca":  # timm EcaModule: Conv1d(1, 1, k), no bias
            names[f"{b}.se.conv.weight"] = (1, 1, eca_k[c])
        if cin != c:
            names[f"{b}.downsample.0.weight"] = (c, cin, 1, 1)
            names.update(_bn(f"{b}.downsample.1", c))
        cin = c
    names["fc.weight"] = (10, 128)
    names["fc.bias"] = (10,)
    return names


def timm_resnet50() -> dict[str, tuple[int, ...]]:
    """timm resnet50: 7x7 conv1, Bottleneck blocks (3, 4, 6, 3), fc of 1000."""
    names: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    cin = 64
    for i, (depth, w) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        for j in range(depth):
            b = f"layer{i}.{j}"
            names[f"{b}.conv1.weight"] = (w, cin, 1, 1)
            names.update(_bn(f"{b}.bn1", w))
            names[f"{b}.conv2.weight"] = (w, w, 3, 3)
            names.update(_bn(f"{b}.bn2", w))
            names[f"{b}.conv3.weight"] = (4 * w, w, 1, 1)
            names.update(_bn(f"{b}.bn3", 4 * w))
            if j == 0:
                names[f"{b}.downsample.0.weight"] = (4 * w, cin, 1, 1)
                names.update(_bn(f"{b}.downsample.1", 4 * w))
            cin = 4 * w
    names["fc.weight"] = (1000, 2048)
    names["fc.bias"] = (1000,)
    return names


def timm_convnext_pico() -> dict[str, tuple[int, ...]]:
    """timm ConvNeXt, depths (1, 1, 2, 1), dims 32-256, 2x2 patchify stem, 10 classes."""
    dims, depths = (32, 64, 128, 256), (1, 1, 2, 1)
    names: dict[str, tuple[int, ...]] = {
        "stem.0.weight": (32, 3, 2, 2),
        "stem.0.bias": (32,),
        "stem.1.weight": (32,),
        "stem.1.bias": (32,),
    }
    for i, (d, depth) in enumerate(zip(dims, depths)):
        if i > 0:
            names[f"stages.{i}.downsample.0.weight"] = (dims[i - 1],)
            names[f"stages.{i}.downsample.0.bias"] = (dims[i - 1],)
            names[f"stages.{i}.downsample.1.weight"] = (d, dims[i - 1], 2, 2)
            names[f"stages.{i}.downsample.1.bias"] = (d,)
        for j in range(depth):
            b = f"stages.{i}.blocks.{j}"
            names[f"{b}.gamma"] = (d,)
            names[f"{b}.conv_dw.weight"] = (d, 1, 7, 7)
            names[f"{b}.conv_dw.bias"] = (d,)
            names[f"{b}.norm.weight"] = (d,)
            names[f"{b}.norm.bias"] = (d,)
            names[f"{b}.mlp.fc1.weight"] = (4 * d, d)
            names[f"{b}.mlp.fc1.bias"] = (4 * d,)
            names[f"{b}.mlp.fc2.weight"] = (d, 4 * d)
            names[f"{b}.mlp.fc2.bias"] = (d,)
    names.update(
        {
            "head.norm.weight": (256,),
            "head.norm.bias": (256,),
            "head.fc.weight": (10, 256),
            "head.fc.bias": (10,),
        }
    )
    return names


def timm_vit_pico() -> dict[str, tuple[int, ...]]:
    """timm VisionTransformer: patch 4 at 32 px (8x8 grid), width 128, depth 6, mlp 2x."""
    names: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, 128),
        "pos_embed": (1, 65, 128),
        "patch_embed.proj.weight": (128, 3, 4, 4),
        "patch_embed.proj.bias": (128,),
    }
    for i in range(6):
        b = f"blocks.{i}"
        for ln in ("norm1", "norm2"):
            names[f"{b}.{ln}.weight"] = (128,)
            names[f"{b}.{ln}.bias"] = (128,)
        names[f"{b}.attn.qkv.weight"] = (384, 128)
        names[f"{b}.attn.qkv.bias"] = (384,)
        names[f"{b}.attn.proj.weight"] = (128, 128)
        names[f"{b}.attn.proj.bias"] = (128,)
        names[f"{b}.mlp.fc1.weight"] = (256, 128)
        names[f"{b}.mlp.fc1.bias"] = (256,)
        names[f"{b}.mlp.fc2.weight"] = (128, 256)
        names[f"{b}.mlp.fc2.bias"] = (128,)
    names.update({"norm.weight": (128,), "norm.bias": (128,)})
    names.update({"head.weight": (10, 128), "head.bias": (10,)})
    return names


def timm_mambaout_pico() -> dict[str, tuple[int, ...]]:
    """timm MambaOut: depths (1, 1, 2, 1), dims 16-96, MLP head 4x, 10 classes."""
    dims, depths = (16, 32, 64, 96), (1, 1, 2, 1)
    names: dict[str, tuple[int, ...]] = {
        "stem.conv1.weight": (8, 3, 3, 3),
        "stem.conv1.bias": (8,),
        "stem.norm1.weight": (8,),
        "stem.norm1.bias": (8,),
        "stem.conv2.weight": (16, 8, 3, 3),
        "stem.conv2.bias": (16,),
        "stem.norm2.weight": (16,),
        "stem.norm2.bias": (16,),
    }
    for i, (d, depth) in enumerate(zip(dims, depths)):
        if i > 0:
            names[f"stages.{i}.downsample.conv.weight"] = (d, dims[i - 1], 3, 3)
            names[f"stages.{i}.downsample.conv.bias"] = (d,)
            names[f"stages.{i}.downsample.norm.weight"] = (d,)
            names[f"stages.{i}.downsample.norm.bias"] = (d,)
        hidden = int(8 / 3 * d)  # GatedConvBlock: expansion 8/3, conv on all channels
        for j in range(depth):
            b = f"stages.{i}.blocks.{j}"
            names[f"{b}.norm.weight"] = (d,)
            names[f"{b}.norm.bias"] = (d,)
            names[f"{b}.fc1.weight"] = (2 * hidden, d)
            names[f"{b}.fc1.bias"] = (2 * hidden,)
            names[f"{b}.conv.weight"] = (d, 1, 7, 7)
            names[f"{b}.conv.bias"] = (d,)
            names[f"{b}.fc2.weight"] = (d, hidden)
            names[f"{b}.fc2.bias"] = (d,)
    names.update(
        {
            "head.norm.weight": (96,),
            "head.norm.bias": (96,),
            "head.pre_logits.fc.weight": (384, 96),
            "head.pre_logits.fc.bias": (384,),
            "head.pre_logits.norm.weight": (384,),
            "head.pre_logits.norm.bias": (384,),
            "head.fc.weight": (10, 384),
            "head.fc.bias": (10,),
        }
    )
    return names


def timm_mixer_pico() -> dict[str, tuple[int, ...]]:
    """timm MlpMixer: patch 4 at 32 px (64 tokens), width 128, depth 6, MLPs 64 / 512."""
    names: dict[str, tuple[int, ...]] = {
        "stem.proj.weight": (128, 3, 4, 4),
        "stem.proj.bias": (128,),
    }
    for i in range(6):
        b = f"blocks.{i}"
        for ln in ("norm1", "norm2"):
            names[f"{b}.{ln}.weight"] = (128,)
            names[f"{b}.{ln}.bias"] = (128,)
        names[f"{b}.mlp_tokens.fc1.weight"] = (64, 64)
        names[f"{b}.mlp_tokens.fc1.bias"] = (64,)
        names[f"{b}.mlp_tokens.fc2.weight"] = (64, 64)
        names[f"{b}.mlp_tokens.fc2.bias"] = (64,)
        names[f"{b}.mlp_channels.fc1.weight"] = (512, 128)
        names[f"{b}.mlp_channels.fc1.bias"] = (512,)
        names[f"{b}.mlp_channels.fc2.weight"] = (128, 512)
        names[f"{b}.mlp_channels.fc2.bias"] = (128,)
    names.update({"norm.weight": (128,), "norm.bias": (128,)})
    names.update({"head.weight": (10, 128), "head.bias": (10,)})
    return names


def _cbn(prefix: str, cout: int, cin: int, k: int, bn: str = "bn") -> dict[str, tuple[int, ...]]:
    """timm's ConvNormAct: ``prefix.conv`` (no bias) and ``prefix.bn``."""
    return {f"{prefix}.conv.weight": (cout, cin, k, k), **_bn(f"{prefix}.{bn}", cout)}


def _conv(name: str, cout: int, cin: int, kh: int, kw: int | None = None, bias: bool = True):
    out = {f"{name}.weight": (cout, cin, kh, kh if kw is None else kw)}
    if bias:
        out[f"{name}.bias"] = (cout,)
    return out


def _linear(name: str, cout: int, cin: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (cout, cin), f"{name}.bias": (cout,)}


def timm_metaformer_pico(mixers: tuple[str, ...], mlp_head: bool) -> dict[str, tuple[int, ...]]:
    """timm MetaFormer (metaformer.py): depths (1, 1, 2, 1), dims 32-256, 3x3 stem.

    Norms are bias-free (GroupNorm1NoBias / LayerNorm2dNoBias); StarReLU keeps its scale
    and bias as 1-element vectors; res-scale in stages 3-4; attention stages run their
    MLP channels-last with nn.Linear, the others with 1x1 convs.
    """
    dims, depths = (32, 64, 128, 256), (1, 1, 2, 1)
    names = {**_conv("stem.conv", 32, 3, 3), "stem.norm.weight": (32,)}
    for i, (d, depth) in enumerate(zip(dims, depths)):
        if i > 0:
            names[f"stages.{i}.downsample.norm.weight"] = (dims[i - 1],)
            names.update(_conv(f"stages.{i}.downsample.conv", d, dims[i - 1], 3))
        for j in range(depth):
            b = f"stages.{i}.blocks.{j}"
            names[f"{b}.norm1.weight"] = (d,)
            if mixers[i] == "sepconv":  # SepConv: expansion 2, 7x7 depthwise, no biases
                names[f"{b}.token_mixer.pwconv1.weight"] = (2 * d, d, 1, 1)
                names[f"{b}.token_mixer.act1.scale"] = (1,)
                names[f"{b}.token_mixer.act1.bias"] = (1,)
                names[f"{b}.token_mixer.dwconv.weight"] = (2 * d, 1, 7, 7)
                names[f"{b}.token_mixer.pwconv2.weight"] = (d, 2 * d, 1, 1)
            elif mixers[i] == "attention":  # Attention: head dim 32, no qkv/proj bias
                names[f"{b}.token_mixer.qkv.weight"] = (3 * d, d)
                names[f"{b}.token_mixer.proj.weight"] = (d, d)
            if i >= 2:
                names[f"{b}.res_scale1.scale"] = (d,)
            names[f"{b}.norm2.weight"] = (d,)
            tail = () if mixers[i] == "attention" else (1, 1)
            names[f"{b}.mlp.fc1.weight"] = (4 * d, d, *tail)
            names[f"{b}.mlp.act.scale"] = (1,)
            names[f"{b}.mlp.act.bias"] = (1,)
            names[f"{b}.mlp.fc2.weight"] = (d, 4 * d, *tail)
            if i >= 2:
                names[f"{b}.res_scale2.scale"] = (d,)
    names.update({"head.norm.weight": (256,), "head.norm.bias": (256,)})
    if mlp_head:  # MlpHead: fc1 (x4), SquaredReLU, LayerNorm, fc2
        names.update({"head.fc.fc1.weight": (1024, 256), "head.fc.fc1.bias": (1024,)})
        names.update({"head.fc.norm.weight": (1024,), "head.fc.norm.bias": (1024,)})
        names.update({"head.fc.fc2.weight": (10, 1024), "head.fc.fc2.bias": (10,)})
    else:
        names.update({"head.fc.weight": (10, 256), "head.fc.bias": (10,)})
    return names


def timm_regnet_pico() -> dict[str, tuple[int, ...]]:
    """timm RegNet-Y (regnet.py): widths 16/32/64, depths 1/2/3, group width 8, SE 0.25."""
    names = _cbn("stem", 16, 3, 3)
    cin = 16
    for i, (w, depth) in enumerate(zip((16, 32, 64), (1, 2, 3))):
        for j in range(depth):
            b = f"s{i + 1}.b{j + 1}"  # 1-based stages and blocks
            rd = cin // 4  # SE channels from the block's input width
            names.update(_cbn(f"{b}.conv1", w, cin, 1))
            names.update(_cbn(f"{b}.conv2", w, 8, 3))  # grouped: 8 channels per group
            names.update(_conv(f"{b}.se.fc1", rd, w, 1))
            names.update(_conv(f"{b}.se.fc2", w, rd, 1))
            names.update(_cbn(f"{b}.conv3", w, w, 1))
            if j == 0:
                names.update(_cbn(f"{b}.downsample", w, cin, 1))
            cin = w
    names.update({"head.fc.weight": (10, 64), "head.fc.bias": (10,)})
    return names


def _plain_conv_bn(conv: str, bn: str, cout: int, cin: int, k: int) -> dict[str, tuple[int, ...]]:
    return {f"{conv}.weight": (cout, cin, k, k), **_bn(bn, cout)}


def timm_res2net_pico() -> dict[str, tuple[int, ...]]:
    """timm Res2Net (res2net.py, ResNet of Bottle2neck): scale 4, widths 6/13/26/52."""
    names = _plain_conv_bn("conv1", "bn1", 16, 3, 3)
    cin = 16
    for i, (w, out) in enumerate(zip((6, 13, 26, 52), (64, 128, 256, 512)), start=1):
        b = f"layer{i}.0"
        names.update(_plain_conv_bn(f"{b}.conv1", f"{b}.bn1", 4 * w, cin, 1))
        for k in range(3):  # scale - 1 3x3 convs, their BNs in a separate list
            names[f"{b}.convs.{k}.weight"] = (w, w, 3, 3)
            names.update(_bn(f"{b}.bns.{k}", w))
        names.update(_plain_conv_bn(f"{b}.conv3", f"{b}.bn3", out, 4 * w, 1))
        names.update(_plain_conv_bn(f"{b}.downsample.0", f"{b}.downsample.1", out, cin, 1))
        cin = out
    names.update({"fc.weight": (10, 512), "fc.bias": (10,)})
    return names


def timm_resnest_pico() -> dict[str, tuple[int, ...]]:
    """timm ResNeSt (resnest.py): deep stem 16-16-32, radix 2, one block per stage."""
    names = {
        **_plain_conv_bn("conv1.0", "conv1.1", 16, 3, 3),
        **_plain_conv_bn("conv1.3", "conv1.4", 16, 16, 3),
        **_plain_conv_bn("conv1.6", "bn1", 32, 16, 3),
    }
    cin = 32
    for i, g in enumerate((16, 32, 64, 128), start=1):
        b = f"layer{i}.0"
        attn = max(g * 2 // 4, 32)  # SplitAttn: rd = max(channels * radix / 4, 32)
        names.update(_plain_conv_bn(f"{b}.conv1", f"{b}.bn1", g, cin, 1))
        names.update(_plain_conv_bn(f"{b}.conv2.conv", f"{b}.conv2.bn0", 2 * g, g // 2, 3))
        names.update(_conv(f"{b}.conv2.fc1", attn, g, 1))
        names.update(_bn(f"{b}.conv2.bn1", attn))
        names.update(_conv(f"{b}.conv2.fc2", 2 * g, attn, 1))
        names.update(_plain_conv_bn(f"{b}.conv3", f"{b}.bn3", 4 * g, g, 1))
        names.update(_plain_conv_bn(f"{b}.downsample.1", f"{b}.downsample.2", 4 * g, cin, 1))
        cin = 4 * g
    names.update({"fc.weight": (10, 512), "fc.bias": (10,)})
    return names


def timm_cspresnet_pico() -> dict[str, tuple[int, ...]]:
    """timm CSPNet (cspnet.py), CSPResNet layout: outs 32-256, bottleneck blocks, exp 2."""
    names = _cbn("stem.conv1", 16, 3, 3)
    cin = 16
    for i, out in enumerate((32, 64, 128, 256)):
        s = f"stages.{i}"
        if i > 0:
            names.update(_cbn(f"{s}.conv_down", cin, cin, 3))
        names.update(_cbn(f"{s}.conv_exp", 2 * out, cin, 1))
        names.update(_cbn(f"{s}.blocks.0.conv1", out // 2, out, 1))
        names.update(_cbn(f"{s}.blocks.0.conv2", out // 2, out // 2, 3))
        names.update(_cbn(f"{s}.blocks.0.conv3", out, out // 2, 1))
        names.update(_cbn(f"{s}.conv_transition_b", out, out, 1))
        names.update(_cbn(f"{s}.conv_transition", out, 2 * out, 1))
        cin = out
    names.update({"head.fc.weight": (10, 256), "head.fc.bias": (10,)})
    return names


def timm_vovnet_pico() -> dict[str, tuple[int, ...]]:
    """timm VoVNet-v2 (vovnet.py): 3-conv stem, OSA blocks of 3 convs, eSE on each stage's last."""
    names = {**_cbn("stem.0", 16, 3, 3), **_cbn("stem.1", 16, 16, 3), **_cbn("stem.2", 32, 16, 3)}
    cin = 32
    for i, (mid, out, depth) in enumerate(zip((16, 24, 32, 40), (32, 64, 96, 128), (1, 1, 2, 1))):
        for j in range(depth):
            b = f"stages.{i}.blocks.{j}"
            c = cin
            for k in range(3):
                names.update(_cbn(f"{b}.conv_mid.{k}", mid, c, 3))
                c = mid
            names.update(_cbn(f"{b}.conv_concat", out, cin + 3 * mid, 1))
            if j == depth - 1:
                names.update(_conv(f"{b}.attn.fc", out, out, 1))
            cin = out
    names.update({"head.fc.weight": (10, 128), "head.fc.bias": (10,)})
    return names


def timm_convmixer_pico() -> dict[str, tuple[int, ...]]:
    """timm ConvMixer (convmixer.py): width 128, patch 2, kernel 5, depth 6."""
    names = {**_conv("stem.0", 128, 3, 2), **_bn("stem.2", 128)}
    for i in range(6):
        names.update(_conv(f"blocks.{i}.0.fn.0", 128, 1, 5))  # Residual(dw conv, GELU, BN)
        names.update(_bn(f"blocks.{i}.0.fn.2", 128))
        names.update(_conv(f"blocks.{i}.1", 128, 128, 1))
        names.update(_bn(f"blocks.{i}.3", 128))
    names.update({"head.weight": (10, 128), "head.bias": (10,)})
    return names


def timm_convit_pico() -> dict[str, tuple[int, ...]]:
    """timm ConViT (convit.py): width 96, 4 heads, 4 GPSA then 2 MHSA blocks, MLP 3x."""
    names: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, 96),
        "pos_embed": (1, 64, 96),
        "patch_embed.proj.weight": (96, 3, 4, 4),
        "patch_embed.proj.bias": (96,),
    }
    for i in range(6):
        b = f"blocks.{i}"
        names.update({f"{b}.norm1.weight": (96,), f"{b}.norm1.bias": (96,)})
        if i < 4:  # GPSA: qk and v without bias, 3 -> heads position projection, gating
            names[f"{b}.attn.gating_param"] = (4,)
            names[f"{b}.attn.qk.weight"] = (192, 96)
            names[f"{b}.attn.v.weight"] = (96, 96)
            names.update(_linear(f"{b}.attn.pos_proj", 4, 3))
        else:
            names[f"{b}.attn.qkv.weight"] = (288, 96)
        names.update(_linear(f"{b}.attn.proj", 96, 96))
        names.update({f"{b}.norm2.weight": (96,), f"{b}.norm2.bias": (96,)})
        names.update(_linear(f"{b}.mlp.fc1", 288, 96))
        names.update(_linear(f"{b}.mlp.fc2", 96, 288))
    names.update({"norm.weight": (96,), "norm.bias": (96,)})
    names.update(_linear("head", 10, 96))
    return names


def timm_inceptionnext_pico() -> dict[str, tuple[int, ...]]:
    """timm InceptionNeXt (inception_next.py): depths (1, 1, 2, 1), dims 32-256, 2x2 stem."""
    dims, depths = (32, 64, 128, 256), (1, 1, 2, 1)
    names = {**_conv("stem.0", 32, 3, 2), **_bn("stem.1", 32)}
    for i, (d, depth) in enumerate(zip(dims, depths)):
        if i > 0:
            names.update(_bn(f"stages.{i}.downsample.0", dims[i - 1]))
            names.update(_conv(f"stages.{i}.downsample.1", d, dims[i - 1], 2))
        g = d // 8  # InceptionDWConv2d: 1/8 of the channels per depthwise branch
        for j in range(depth):
            b = f"stages.{i}.blocks.{j}"
            names.update(_conv(f"{b}.token_mixer.dwconv_hw", g, 1, 3))
            names.update(_conv(f"{b}.token_mixer.dwconv_w", g, 1, 1, 7))
            names.update(_conv(f"{b}.token_mixer.dwconv_h", g, 1, 7, 1))
            names.update(_bn(f"{b}.norm", d))
            h = (4, 4, 4, 3)[i] * d  # mlp_ratios (4, 4, 4, 3)
            names.update(_conv(f"{b}.mlp.fc1", h, d, 1))
            names.update(_conv(f"{b}.mlp.fc2", d, h, 1))
            names[f"{b}.gamma"] = (d,)
    names.update(_linear("head.fc1", 512, 256))  # MlpClassifierHead, ratio 2
    names.update({"head.norm.weight": (512,), "head.norm.bias": (512,)})
    names.update(_linear("head.fc2", 10, 512))
    return names


def timm_xcit_pico() -> dict[str, tuple[int, ...]]:
    """timm XCiT (xcit.py): width 96, patch 4 (two conv3x3 = conv + BN), 4 XCA blocks,
    2 class-attention blocks with separate q, k, v, MLP 3x, 4 heads."""
    names: dict[str, tuple[int, ...]] = {"cls_token": (1, 1, 96)}
    names["patch_embed.proj.0.0.weight"] = (48, 3, 3, 3)
    names.update(_bn("patch_embed.proj.0.1", 48))
    names["patch_embed.proj.2.0.weight"] = (96, 48, 3, 3)
    names.update(_bn("patch_embed.proj.2.1", 96))
    names.update(_conv("pos_embed.token_projection", 96, 64, 1))  # 2 x 32 Fourier features
    ln = ("norm1", "norm2")
    for i in range(4):
        b = f"blocks.{i}"
        for g in ("gamma1", "gamma2", "gamma3"):
            names[f"{b}.{g}"] = (96,)
        for n in (*ln, "norm3"):
            names.update({f"{b}.{n}.weight": (96,), f"{b}.{n}.bias": (96,)})
        names[f"{b}.attn.temperature"] = (4, 1, 1)
        names.update(_linear(f"{b}.attn.qkv", 288, 96))
        names.update(_linear(f"{b}.attn.proj", 96, 96))
        names.update(_conv(f"{b}.local_mp.conv1", 96, 1, 3))
        names.update(_bn(f"{b}.local_mp.bn", 96))
        names.update(_conv(f"{b}.local_mp.conv2", 96, 1, 3))
        names.update(_linear(f"{b}.mlp.fc1", 288, 96))
        names.update(_linear(f"{b}.mlp.fc2", 96, 288))
    for i in range(2):
        b = f"cls_attn_blocks.{i}"
        names.update({f"{b}.gamma1": (96,), f"{b}.gamma2": (96,)})
        for n in ln:
            names.update({f"{b}.{n}.weight": (96,), f"{b}.{n}.bias": (96,)})
        for proj in ("q", "k", "v", "proj"):
            names.update(_linear(f"{b}.attn.{proj}", 96, 96))
        names.update(_linear(f"{b}.mlp.fc1", 288, 96))
        names.update(_linear(f"{b}.mlp.fc2", 96, 288))
    names.update({"norm.weight": (96,), "norm.bias": (96,)})
    names.update(_linear("head", 10, 96))
    return names


def timm_crossvit_pico() -> dict[str, tuple[int, ...]]:
    """timm CrossViT (crossvit.py): widths 48 / 96, patches 4 / 8 at 32 px, 2 multi-scale
    blocks of depths (1, 2), one cross-attention per direction, MLP 3x."""
    dims, patches, grids, depths = (48, 96), (4, 8), (64, 16), (1, 2)
    names: dict[str, tuple[int, ...]] = {}
    for k in range(2):
        names[f"pos_embed_{k}"] = (1, grids[k] + 1, dims[k])
        names[f"cls_token_{k}"] = (1, 1, dims[k])
        names.update(_conv(f"patch_embed.{k}.proj", dims[k], 3, patches[k]))
    for i in range(2):
        for k, d in enumerate(dims):
            other = dims[1 - k]
            for j in range(depths[k]):
                b = f"blocks.{i}.blocks.{k}.{j}"
                for n in ("norm1", "norm2"):
                    names.update({f"{b}.{n}.weight": (d,), f"{b}.{n}.bias": (d,)})
                names.update(_linear(f"{b}.attn.qkv", 3 * d, d))
                names.update(_linear(f"{b}.attn.proj", d, d))
                names.update(_linear(f"{b}.mlp.fc1", 3 * d, d))
                names.update(_linear(f"{b}.mlp.fc2", d, 3 * d))
            # projs.k: LN + GELU + Linear into the other width; fusion.k works there;
            # revert_projs.k: LN + GELU + Linear back
            names.update(
                {f"blocks.{i}.projs.{k}.0.weight": (d,), f"blocks.{i}.projs.{k}.0.bias": (d,)}
            )
            names.update(_linear(f"blocks.{i}.projs.{k}.2", other, d))
            f = f"blocks.{i}.fusion.{k}"
            names.update({f"{f}.norm1.weight": (other,), f"{f}.norm1.bias": (other,)})
            for proj in ("wq", "wk", "wv", "proj"):
                names.update(_linear(f"{f}.attn.{proj}", other, other))
            r = f"blocks.{i}.revert_projs.{k}"
            names.update({f"{r}.0.weight": (other,), f"{r}.0.bias": (other,)})
            names.update(_linear(f"{r}.2", d, other))
    for k, d in enumerate(dims):
        names.update({f"norm.{k}.weight": (d,), f"norm.{k}.bias": (d,)})
        names.update(_linear(f"head.{k}", 10, d))
    return names


def timm_mobileone_pico() -> dict[str, tuple[int, ...]]:
    """timm MobileOne (byobnet.py, unfused): 3x3/2 stem of one branch, widths 24-128,
    blocks (1, 2, 2, 1) of a depthwise 3x3 unit and a pointwise 1x1 unit, 4 branches each,
    SE (1/16) in the last two blocks."""

    def unit(p: str, cin: int, cout: int, k: int, groups: int, skip: bool, se: bool):
        out: dict[str, tuple[int, ...]] = {}
        if skip:
            out.update(_bn(f"{p}.identity", cout))
        for b in range(1 if p == "stem" else 4):
            out.update(_cbn(f"{p}.conv_kxk.{b}", cout, cin // groups, k))
        if k > 1:
            out.update(_cbn(f"{p}.conv_scale", cout, cin // groups, 1))
        if se:
            out.update(_conv(f"{p}.attn.fc1", cout // 16, cout, 1))
            out.update(_conv(f"{p}.attn.fc2", cout, cout // 16, 1))
        return out

    names = unit("stem", 3, 24, 3, 1, False, False)
    cin, seen = 24, 0
    for s, (w, depth) in enumerate(zip((24, 48, 96, 128), (1, 2, 2, 1))):
        for j in range(depth):
            seen += 1
            se = seen > 4  # the last two of the six blocks
            names.update(unit(f"stages.{s}.{2 * j}", cin, cin, 3, cin, j > 0, se))
            names.update(unit(f"stages.{s}.{2 * j + 1}", cin, w, 1, 1, cin == w, se))
            cin = w
    names.update({"head.fc.weight": (10, 128), "head.fc.bias": (10,)})
    return names


def _bc(prefix: str, cout: int, cin: int, k: int | tuple[int, int]) -> dict[str, tuple[int, ...]]:
    """timm's BasicConv2d: ``prefix.conv`` (no bias, k or (kh, kw)) and ``prefix.bn``."""
    kh, kw = (k, k) if isinstance(k, int) else k
    return {f"{prefix}.conv.weight": (cout, cin, kh, kw), **_bn(f"{prefix}.bn", cout)}


def timm_inception_v3_pico() -> dict[str, tuple[int, ...]]:
    """timm Inception-v3 (inception_v3.py) at 1/8 width with one block of each kind
    (Mixed_5b A, Mixed_6a B, Mixed_6b C, Mixed_7a D, Mixed_7b E) after a two-conv stem
    that takes timm's first two stem names."""
    names = {**_bc("Conv2d_1a_3x3", 8, 3, 3), **_bc("Conv2d_2a_3x3", 24, 8, 3)}
    a = "Mixed_5b"
    names.update(_bc(f"{a}.branch1x1", 8, 24, 1))
    names.update(_bc(f"{a}.branch5x5_1", 6, 24, 1))
    names.update(_bc(f"{a}.branch5x5_2", 8, 6, 5))
    names.update(_bc(f"{a}.branch3x3dbl_1", 8, 24, 1))
    names.update(_bc(f"{a}.branch3x3dbl_2", 12, 8, 3))
    names.update(_bc(f"{a}.branch3x3dbl_3", 12, 12, 3))
    names.update(_bc(f"{a}.branch_pool", 4, 24, 1))
    b = "Mixed_6a"  # in: 8 + 8 + 12 + 4 = 32
    names.update(_bc(f"{b}.branch3x3", 48, 32, 3))
    names.update(_bc(f"{b}.branch3x3dbl_1", 8, 32, 1))
    names.update(_bc(f"{b}.branch3x3dbl_2", 12, 8, 3))
    names.update(_bc(f"{b}.branch3x3dbl_3", 12, 12, 3))
    c = "Mixed_6b"  # in: 48 + 12 + 32 = 92, c7 = 16
    names.update(_bc(f"{c}.branch1x1", 24, 92, 1))
    names.update(_bc(f"{c}.branch7x7_1", 16, 92, 1))
    names.update(_bc(f"{c}.branch7x7_2", 16, 16, (1, 7)))
    names.update(_bc(f"{c}.branch7x7_3", 24, 16, (7, 1)))
    names.update(_bc(f"{c}.branch7x7dbl_1", 16, 92, 1))
    names.update(_bc(f"{c}.branch7x7dbl_2", 16, 16, (7, 1)))
    names.update(_bc(f"{c}.branch7x7dbl_3", 16, 16, (1, 7)))
    names.update(_bc(f"{c}.branch7x7dbl_4", 16, 16, (7, 1)))
    names.update(_bc(f"{c}.branch7x7dbl_5", 24, 16, (1, 7)))
    names.update(_bc(f"{c}.branch_pool", 24, 92, 1))
    d = "Mixed_7a"  # in: 4 x 24 = 96
    names.update(_bc(f"{d}.branch3x3_1", 24, 96, 1))
    names.update(_bc(f"{d}.branch3x3_2", 40, 24, 3))
    names.update(_bc(f"{d}.branch7x7x3_1", 24, 96, 1))
    names.update(_bc(f"{d}.branch7x7x3_2", 24, 24, (1, 7)))
    names.update(_bc(f"{d}.branch7x7x3_3", 24, 24, (7, 1)))
    names.update(_bc(f"{d}.branch7x7x3_4", 24, 24, 3))
    e = "Mixed_7b"  # in: 40 + 24 + 96 = 160
    names.update(_bc(f"{e}.branch1x1", 40, 160, 1))
    names.update(_bc(f"{e}.branch3x3_1", 48, 160, 1))
    names.update(_bc(f"{e}.branch3x3_2a", 48, 48, (1, 3)))
    names.update(_bc(f"{e}.branch3x3_2b", 48, 48, (3, 1)))
    names.update(_bc(f"{e}.branch3x3dbl_1", 56, 160, 1))
    names.update(_bc(f"{e}.branch3x3dbl_2", 48, 56, 3))
    names.update(_bc(f"{e}.branch3x3dbl_3a", 48, 48, (1, 3)))
    names.update(_bc(f"{e}.branch3x3dbl_3b", 48, 48, (3, 1)))
    names.update(_bc(f"{e}.branch_pool", 24, 160, 1))
    names.update({"fc.weight": (10, 256), "fc.bias": (10,)})  # 40 + 96 + 96 + 24
    return names


def timm_inception_resnet_v2_pico() -> dict[str, tuple[int, ...]]:
    """timm Inception-ResNet-v2 (inception_resnet_v2.py) at 1/8 width: two stem convs,
    mixed_5b, 2 Block35 (``repeat``), mixed_6a, 2 Block17 (``repeat_1``), mixed_7a, one
    Block8 (``repeat_2``), the final ``block8``, conv2d_7b, classif."""
    names = {**_bc("conv2d_1a", 8, 3, 3), **_bc("conv2d_2a", 24, 8, 3)}
    m = "mixed_5b"
    names.update(_bc(f"{m}.branch0", 12, 24, 1))
    names.update(_bc(f"{m}.branch1.0", 6, 24, 1))
    names.update(_bc(f"{m}.branch1.1", 8, 6, 5))
    names.update(_bc(f"{m}.branch2.0", 8, 24, 1))
    names.update(_bc(f"{m}.branch2.1", 12, 8, 3))
    names.update(_bc(f"{m}.branch2.2", 12, 12, 3))
    names.update(_bc(f"{m}.branch3.1", 8, 24, 1))
    for j in range(2):  # Block35 on 40 channels
        b = f"repeat.{j}"
        names.update(_bc(f"{b}.branch0", 4, 40, 1))
        names.update(_bc(f"{b}.branch1.0", 4, 40, 1))
        names.update(_bc(f"{b}.branch1.1", 4, 4, 3))
        names.update(_bc(f"{b}.branch2.0", 4, 40, 1))
        names.update(_bc(f"{b}.branch2.1", 6, 4, 3))
        names.update(_bc(f"{b}.branch2.2", 8, 6, 3))
        names.update(_conv(f"{b}.conv2d", 40, 16, 1))
    m = "mixed_6a"
    names.update(_bc(f"{m}.branch0", 48, 40, 3))
    names.update(_bc(f"{m}.branch1.0", 32, 40, 1))
    names.update(_bc(f"{m}.branch1.1", 32, 32, 3))
    names.update(_bc(f"{m}.branch1.2", 48, 32, 3))
    for j in range(2):  # Block17 on 48 + 48 + 40 = 136 channels
        b = f"repeat_1.{j}"
        names.update(_bc(f"{b}.branch0", 24, 136, 1))
        names.update(_bc(f"{b}.branch1.0", 16, 136, 1))
        names.update(_bc(f"{b}.branch1.1", 20, 16, (1, 7)))
        names.update(_bc(f"{b}.branch1.2", 24, 20, (7, 1)))
        names.update(_conv(f"{b}.conv2d", 136, 48, 1))
    m = "mixed_7a"
    names.update(_bc(f"{m}.branch0.0", 32, 136, 1))
    names.update(_bc(f"{m}.branch0.1", 48, 32, 3))
    names.update(_bc(f"{m}.branch1.0", 32, 136, 1))
    names.update(_bc(f"{m}.branch1.1", 36, 32, 3))
    names.update(_bc(f"{m}.branch2.0", 32, 136, 1))
    names.update(_bc(f"{m}.branch2.1", 36, 32, 3))
    names.update(_bc(f"{m}.branch2.2", 40, 36, 3))
    for b in ("repeat_2.0", "block8"):  # Block8 on 48 + 36 + 40 + 136 = 260 channels
        names.update(_bc(f"{b}.branch0", 24, 260, 1))
        names.update(_bc(f"{b}.branch1.0", 24, 260, 1))
        names.update(_bc(f"{b}.branch1.1", 28, 24, (1, 3)))
        names.update(_bc(f"{b}.branch1.2", 32, 28, (3, 1)))
        names.update(_conv(f"{b}.conv2d", 260, 56, 1))
    names.update(_bc("conv2d_7b", 192, 260, 1))
    names.update({"classif.weight": (10, 192), "classif.bias": (10,)})
    return names


def _sep(p: str, cin: int, cout: int, k: int) -> dict[str, tuple[int, ...]]:
    """timm BranchSeparables: (ReLU, separable conv, BN) twice; the first may change width."""
    return {
        f"{p}.separable_1.depthwise_conv2d.weight": (cin, 1, k, k),
        f"{p}.separable_1.pointwise_conv2d.weight": (cout, cin, 1, 1),
        **_bn(f"{p}.bn_sep_1", cout),
        f"{p}.separable_2.depthwise_conv2d.weight": (cout, 1, k, k),
        f"{p}.separable_2.pointwise_conv2d.weight": (cout, cout, 1, 1),
        **_bn(f"{p}.bn_sep_2", cout),
    }


def timm_nasnetalarge() -> dict[str, tuple[int, ...]]:
    """timm nasnetalarge (nasnet.py): C = 4032 / 24 = 168, stem of 96, 2 stem cells, then
    (First + 5 Normal) x 3 with ReductionCell0 / ReductionCell1 between."""
    c = 168
    names = _bc("conv0", 96, 3, 3)

    def normal_ops(p: str, w: int) -> None:  # NormalCell / FirstCell: 5x5, 3x3, 5x5, 3x3, 3x3
        for op, k in (("0_left", 5), ("0_right", 3), ("1_left", 5), ("1_right", 3), ("4_left", 3)):
            names.update(_sep(f"{p}.comb_iter_{op}", w, w, k))

    def reduction_ops(p: str, left: int, right: int, w: int) -> None:
        # 5x5 on the input, 7x7 / 7x7 / 5x5 on the previous state, 3x3 on a new state
        names.update(_sep(f"{p}.comb_iter_0_left", left, w, 5))
        names.update(_sep(f"{p}.comb_iter_0_right", right, w, 7))
        names.update(_sep(f"{p}.comb_iter_1_right", right, w, 7))
        names.update(_sep(f"{p}.comb_iter_2_right", right, w, 5))
        names.update(_sep(f"{p}.comb_iter_4_left", w, w, 3))

    names.update(_bc("cell_stem_0.conv_1x1", c // 4, 96, 1))
    reduction_ops("cell_stem_0", c // 4, 96, c // 4)
    names.update(_bc("cell_stem_1.conv_1x1", c // 2, c, 1))
    names["cell_stem_1.path_1.conv.weight"] = (c // 4, 96, 1, 1)
    names["cell_stem_1.path_2.conv.weight"] = (c // 4, 96, 1, 1)
    names.update(_bn("cell_stem_1.final_path_bn", c // 2))
    reduction_ops("cell_stem_1", c // 2, c // 2, c // 2)
    # (in_left, out_left, in_right, out_right) per cell, as NASNetALarge builds them
    n = 0
    for stack, (w, prev_in, first_in) in enumerate(
        ((c, c, 2 * c), (2 * c, 6 * c, 8 * c), (4 * c, 12 * c, 16 * c))
    ):
        if stack > 0:
            r = f"reduction_cell_{stack - 1}"
            names.update(_bc(f"{r}.conv_prev_1x1", w, 6 * w // 2, 1))
            names.update(_bc(f"{r}.conv_1x1", w, 6 * w // 2, 1))
            reduction_ops(r, w, w, w)
        p = f"cell_{n}"  # FirstCell: the previous state goes through a factorized reduction
        names.update(_bc(f"{p}.conv_1x1", w, first_in, 1))
        names[f"{p}.path_1.conv.weight"] = (w // 2, prev_in, 1, 1)
        names[f"{p}.path_2.conv.weight"] = (w // 2, prev_in, 1, 1)
        names.update(_bn(f"{p}.final_path_bn", w))
        normal_ops(p, w)
        n += 1
        for j in range(5):
            p = f"cell_{n}"
            names.update(_bc(f"{p}.conv_prev_1x1", w, first_in if j == 0 else 6 * w, 1))
            names.update(_bc(f"{p}.conv_1x1", w, 6 * w, 1))
            normal_ops(p, w)
            n += 1
    names.update({"last_linear.weight": (1000, 24 * c), "last_linear.bias": (1000,)})
    return names


def timm_resnetrs_pico() -> dict[str, tuple[int, ...]]:
    """timm ResNet-RS (resnet.py, resnetrs*): deep stem 16-16-32 (no pooling conv in this
    small config), Bottlenecks 16-128 wide with SE (0.25 of the output), avg-pool
    downsample."""
    names = {
        **_plain_conv_bn("conv1.0", "conv1.1", 16, 3, 3),
        **_plain_conv_bn("conv1.3", "conv1.4", 16, 16, 3),
        **_plain_conv_bn("conv1.6", "bn1", 32, 16, 3),
    }
    cin = 32
    for i, w in enumerate((16, 32, 64, 128), start=1):
        b = f"layer{i}.0"
        names.update(_plain_conv_bn(f"{b}.conv1", f"{b}.bn1", w, cin, 1))
        names.update(_plain_conv_bn(f"{b}.conv2", f"{b}.bn2", w, w, 3))
        names.update(_plain_conv_bn(f"{b}.conv3", f"{b}.bn3", 4 * w, w, 1))
        names.update(_conv(f"{b}.se.fc1", w, 4 * w, 1))
        names.update(_conv(f"{b}.se.fc2", 4 * w, w, 1))
        names.update(_plain_conv_bn(f"{b}.downsample.1", f"{b}.downsample.2", 4 * w, cin, 1))
        cin = 4 * w
    names.update({"fc.weight": (10, 512), "fc.bias": (10,)})
    return names


def timm_vgg11_pico() -> dict[str, tuple[int, ...]]:
    """timm VGG-11 (vgg.py, vgg11) at 1/4 width, a 1x1 first FC of 256."""
    names: dict[str, tuple[int, ...]] = {}
    index, cin = 0, 3
    for depth, w in zip((1, 1, 2, 2, 2), (16, 32, 64, 128, 128)):
        for _ in range(depth):  # conv, ReLU
            names.update(_conv(f"features.{index}", w, cin, 3))
            index, cin = index + 2, w
        index += 1  # max-pool
    names.update(_conv("pre_logits.fc1", 256, 128, 1))
    names.update(_conv("pre_logits.fc2", 256, 256, 1))
    names.update({"head.fc.weight": (10, 256), "head.fc.bias": (10,)})
    return names


def timm_skresnext_pico() -> dict[str, tuple[int, ...]]:
    """timm SK-ResNeXt (sknet.py, SelectiveKernelBottleneck): 3x3 stem of 16, one block
    per stage, widths 8-64 in 8 groups, two paths, attention width max(w / 16, 32)."""
    names = _plain_conv_bn("conv1", "bn1", 16, 3, 3)
    cin = 16
    for i, w in enumerate((8, 16, 32, 64), start=1):
        b = f"layer{i}.0"
        names.update(_cbn(f"{b}.conv1", w, cin, 1))
        for k in range(2):  # 3x3 and dilated 3x3 paths
            names.update(_cbn(f"{b}.conv2.paths.{k}", w, w // 8, 3))
        names[f"{b}.conv2.attn.fc_reduce.weight"] = (32, w, 1, 1)
        names.update(_bn(f"{b}.conv2.attn.bn", 32))
        names[f"{b}.conv2.attn.fc_select.weight"] = (2 * w, 32, 1, 1)
        names.update(_cbn(f"{b}.conv3", 8 * w, w, 1))
        names.update(_plain_conv_bn(f"{b}.downsample.0", f"{b}.downsample.1", 8 * w, cin, 1))
        cin = 8 * w
    names.update({"fc.weight": (10, 512), "fc.bias": (10,)})
    return names


def timm_cspdarknet_pico() -> dict[str, tuple[int, ...]]:
    """timm CSPNet (cspnet.py), CSPDarkNet layout: outs 32-256, one DarkBlock (1x1, 3x3) per
    stage; the first stage (no strided conv here) keeps full-width blocks with a half-width
    bottleneck, the others split in halves."""
    names = _cbn("stem.conv1", 16, 3, 3)
    names.update(_cbn("stages.0.conv_exp", 64, 16, 1))
    names.update(_cbn("stages.0.blocks.0.conv1", 16, 32, 1))
    names.update(_cbn("stages.0.blocks.0.conv2", 32, 16, 3))
    names.update(_cbn("stages.0.conv_transition_b", 32, 32, 1))
    names.update(_cbn("stages.0.conv_transition", 32, 64, 1))
    cin = 32
    for i, out in enumerate((64, 128, 256), start=1):
        s = f"stages.{i}"
        names.update(_cbn(f"{s}.conv_down", out, cin, 3))
        names.update(_cbn(f"{s}.conv_exp", out, out, 1))
        names.update(_cbn(f"{s}.blocks.0.conv1", out // 2, out // 2, 1))
        names.update(_cbn(f"{s}.blocks.0.conv2", out // 2, out // 2, 3))
        names.update(_cbn(f"{s}.conv_transition_b", out // 2, out // 2, 1))
        names.update(_cbn(f"{s}.conv_transition", out, out, 1))
        cin = out
    names.update({"head.fc.weight": (10, 256), "head.fc.bias": (10,)})
    return names


CASES = {
    "resnet_pico": lambda: timm_resnet_basic(None),
    "seresnet_pico": lambda: timm_resnet_basic("se"),
    "ecaresnet_pico": lambda: timm_resnet_basic("eca"),
    "convnext_pico": timm_convnext_pico,
    "vit_pico": timm_vit_pico,
    "mambaout_pico": timm_mambaout_pico,
    "mixer_pico": timm_mixer_pico,
    "poolformerv2_pico": lambda: timm_metaformer_pico(("pooling",) * 4, mlp_head=False),
    "convformer_pico": lambda: timm_metaformer_pico(("sepconv",) * 4, mlp_head=True),
    "caformer_pico": lambda: timm_metaformer_pico(
        ("sepconv", "sepconv", "attention", "attention"), mlp_head=True
    ),
    "regnet_pico": timm_regnet_pico,
    "res2net_pico": timm_res2net_pico,
    "resnest_pico": timm_resnest_pico,
    "cspnet_pico": timm_cspresnet_pico,
    "cspdarknet_pico": timm_cspdarknet_pico,
    "vovnet_pico": timm_vovnet_pico,
    "convmixer_pico": timm_convmixer_pico,
    "convit_pico": timm_convit_pico,
    "inceptionnext_pico": timm_inceptionnext_pico,
    "xcit_pico": timm_xcit_pico,
    "crossvit_pico": timm_crossvit_pico,
    "mobileone_pico": timm_mobileone_pico,
    "inception_v3_pico": timm_inception_v3_pico,
    "inception_resnet_v2_pico": timm_inception_resnet_v2_pico,
    "resnet_rs_pico": timm_resnetrs_pico,
    "vgg_pico": timm_vgg11_pico,
    "sknet_pico": timm_skresnext_pico,
}
# model options that give the CPU variant timm's layout
CASE_KWARGS = {"vgg_pico": {"batchnorm": False}}


def _random_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            out[k] = torch.rand(s, generator=g) + 0.5
        else:
            out[k] = torch.randn(s, generator=g) * 0.1
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_timm_names_load_strictly_and_round_trip(name, tmp_path):
    timm_sd = _random_state(CASES[name]())
    path = tmp_path / "timm.safetensors"
    save_file(timm_sd, str(path))
    model = create_model(name, num_classes=10, pretrained=str(path), **CASE_KWARGS.get(name, {}))
    assert model.pretrained_info["head_reset"] == []
    own = model.state_dict()
    # every timm tensor landed somewhere, and every model tensor came from the file
    mapped = from_timm(timm_sd, model)
    assert sorted(mapped) == sorted(own)
    for key, value in mapped.items():
        assert torch.equal(own[key], value), key
    # archbench -> timm names -> archbench is the identity, and gives timm's names and
    # shapes back (a reshaped tensor returns to timm's layout)
    back = to_timm(own, model)
    assert {k: tuple(v.shape) for k, v in back.items()} == {
        k: tuple(v.shape) for k, v in timm_sd.items()
    }
    again = from_timm(back, model)
    assert again.keys() == own.keys()
    for key, value in again.items():
        assert torch.equal(value, own[key]), key


def test_resnet50_timm_names_match_the_model_on_meta():
    """The canonical ResNet-50's names and shapes equal timm's under the mapping."""
    with torch.device("meta"):
        model = create_model("resnet50")
    shapes = {k: tuple(v.shape) for k, v in to_timm(model.state_dict(), model).items()}
    assert shapes == timm_resnet50()


def test_nasnet_timm_names_match_the_model_on_meta():
    """NASNet-A Large's cells (numbered by kind in timm) map to timm's names and shapes,
    and back."""
    with torch.device("meta"):
        model = create_model("nasnet_a_large")
    own = model.state_dict()
    theirs = to_timm(own, model)
    assert {k: tuple(v.shape) for k, v in theirs.items()} == timm_nasnetalarge()
    assert sorted(from_timm(theirs, model)) == sorted(own)


def test_metaformer_starrelu_vectors_become_scalars(tmp_path):
    """timm's 1-element StarReLU scale / bias load as archbench's 0-d scalars, and the
    channels-last Linear MLP of attention stages as 1x1 convolutions."""
    timm_sd = _random_state(CASES["caformer_pico"]())
    save_file(timm_sd, str(tmp_path / "c.safetensors"))
    model = create_model(
        "caformer_pico", num_classes=10, pretrained=str(tmp_path / "c.safetensors")
    )
    block = model.stages[0][0]
    assert block.mlp.act.scale.shape == ()
    assert block.mlp.act.scale.item() == timm_sd["stages.0.blocks.0.mlp.act.scale"][0].item()
    assert block.token_mixer.act1.bias.item() == (
        timm_sd["stages.0.blocks.0.token_mixer.act1.bias"][0].item()
    )
    fc1 = timm_sd["stages.2.blocks.1.mlp.fc1.weight"]
    assert torch.equal(model.stages[2][1].mlp.fc1.weight, fc1[:, :, None, None])
    back = to_timm(model.state_dict(), model)
    assert back["stages.0.blocks.0.mlp.act.scale"].shape == (1,)
    assert back["stages.2.blocks.1.mlp.fc1.weight"].shape == fc1.shape


def test_metaformer_wrong_size_starrelu_is_refused(tmp_path):
    """A scale with more than one element is not squeezed into the scalar: loading fails."""
    timm_sd = _random_state(CASES["convformer_pico"]())
    timm_sd["stages.1.blocks.0.mlp.act.scale"] = torch.ones(2)
    save_file(timm_sd, str(tmp_path / "c.safetensors"))
    with pytest.raises(ValueError, match=r"stages\.1\.0\.mlp\.act\.scale: checkpoint \(2,\)"):
        create_model("convformer_pico", num_classes=10, pretrained=str(tmp_path / "c.safetensors"))


@pytest.mark.parametrize(
    ("name", "timm_k", "ours"),
    [
        ("xcit_pico", "cls_attn_blocks.1.attn.{}.weight", "cls_attn_blocks.1.attn.kv.weight"),
        ("crossvit_pico", "blocks.1.fusion.0.attn.w{}.weight", "blocks.1.fusion.0.attn.kv.weight"),
    ],
)
def test_separate_k_and_v_load_as_one_kv(tmp_path, name, timm_k, ours):
    """timm's separate key and value projections are archbench's ``kv`` (keys first)."""
    timm_sd = _random_state(CASES[name]())
    save_file(timm_sd, str(tmp_path / "m.safetensors"))
    model = create_model(name, num_classes=10, pretrained=str(tmp_path / "m.safetensors"))
    want = torch.cat([timm_sd[timm_k.format("k")], timm_sd[timm_k.format("v")]])
    assert torch.equal(model.state_dict()[ours], want)
    # without the value projection nothing loads, and the leftover key is reported
    del timm_sd[timm_k.format("v")]
    save_file(timm_sd, str(tmp_path / "m.safetensors"))
    with pytest.raises(ValueError, match=re.escape(timm_k.format("k"))):
        create_model(name, num_classes=10, pretrained=str(tmp_path / "m.safetensors"))


def test_convnext_timm_gamma_is_the_layer_scale(tmp_path):
    """timm's per-block ``gamma`` scales the branch: zero gamma makes blocks identities."""
    timm_sd = _random_state(timm_convnext_pico())
    for k in timm_sd:
        if k.endswith(".gamma"):
            timm_sd[k] = torch.zeros_like(timm_sd[k])
    path = tmp_path / "c.safetensors"
    save_file(timm_sd, str(path))
    model = create_model("convnext_pico", num_classes=10, pretrained=str(path)).eval()
    blk = model.stages[0][0]
    x = torch.randn(1, 32, 8, 8)
    assert torch.allclose(blk(x), x)


def test_mambaout_head_reset_keeps_the_mlp_hidden_layers(tmp_path):
    """Another class count resets only the last classifier layer (timm's ``head.fc``)."""
    timm_sd = _random_state(timm_mambaout_pico())
    save_file(timm_sd, str(tmp_path / "m.safetensors"))
    with pytest.warns(UserWarning, match=r"head\.fc2\.bias, head\.fc2\.weight"):
        model = create_model(
            "mambaout_pico", num_classes=3, pretrained=str(tmp_path / "m.safetensors")
        )
    assert model.pretrained_info["head_reset"] == ["head.fc2.bias", "head.fc2.weight"]
    assert torch.equal(model.head.fc1.weight, timm_sd["head.pre_logits.fc.weight"])
    assert torch.equal(model.norm.weight, timm_sd["head.norm.weight"])
