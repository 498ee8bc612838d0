"""timm state-dict names load into archbench's families strictly, and map back unchanged.

Each expected state dict below is written out from timm's module tree
(timm/models/resnet.py, convnext.py, vision_transformer.py, mambaout.py, mlp_mixer.py)
for a small config, names
and shapes by hand, independently of archbench's mapping code.
"""

from __future__ import annotations

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


CASES = {
    "resnet_pico": lambda: timm_resnet_basic(None),
    "seresnet_pico": lambda: timm_resnet_basic("se"),
    "ecaresnet_pico": lambda: timm_resnet_basic("eca"),
    "convnext_pico": timm_convnext_pico,
    "vit_pico": timm_vit_pico,
    "mambaout_pico": timm_mambaout_pico,
    "mixer_pico": timm_mixer_pico,
}


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
    model = create_model(name, num_classes=10, pretrained=str(path))
    assert model.pretrained_info["head_reset"] == []
    own = model.state_dict()
    # every timm tensor landed somewhere, and every model tensor came from the file
    mapped = from_timm(timm_sd, model)
    assert sorted(mapped) == sorted(own)
    for key, value in mapped.items():
        assert torch.equal(own[key], value), key
    # archbench -> timm names -> archbench is the identity, and gives timm's names back
    back = to_timm(own, model)
    assert sorted(back) == sorted(timm_sd)
    assert from_timm(back, model).keys() == own.keys()


def test_resnet50_timm_names_match_the_model_on_meta():
    """The canonical ResNet-50's names and shapes equal timm's under the mapping."""
    with torch.device("meta"):
        model = create_model("resnet50")
    shapes = {k: tuple(v.shape) for k, v in to_timm(model.state_dict(), model).items()}
    assert shapes == timm_resnet50()


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
