"""State-dict names of timm (pytorch-image-models) translated to archbench's, per family.

timm's checkpoints name their tensors after timm's module tree; archbench's families
build the same architectures with their own module names (``stem`` instead of
``conv1``/``bn1``, ``head`` instead of ``fc``, ...). Each mapping below is a list of
name-pattern pairs ``(timm, archbench)`` written from timm's model source
(``timm/models/resnet.py``, ``convnext.py``, ``vision_transformer.py``); a name that no
pair matches is the same in both. The pairs are applied in both directions, so a state
dict can go from timm to archbench (loading) and back (``to_timm``).

A mapping is chosen by the model's class (``ResNet``, ``ConvNeXt``,
``VisionTransformer``, ``MlpMixer``, ``MambaOut``); ``timm_families()`` lists the mapped
classes. The names are only
renamed, never reshaped. The regular expressions are the stdlib's ``re``: the mapping
is a handful of renames per family, for which no library is needed.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
import torch.nn as nn

__all__ = ["from_timm", "has_timm_mapping", "timm_families", "to_timm"]

Rule = tuple[str, str]  # (timm name, archbench name) with {placeholders}

# {i}, {j}: a block or stage index; {fc}: fc1/fc2; {rest}: the rest of the name.
# An index may carry an offset on one side: "{j+2}" is the other side's j plus 2.
_PLACEHOLDERS = {"i": r"\d+", "j": r"\d+", "fc": r"fc\d", "rest": r".+"}
_FIELD = re.compile(r"\{(\w+)([+-]\d+)?\}")


def _resnet_rules(model: nn.Module) -> list[Rule]:
    # timm: conv1/bn1 stem (+ max-pool), block attention as ``se`` (SE: fc1/fc2,
    # ECA: conv), classifier ``fc``. archbench: ``stem`` Sequential (the conv-bn pair
    # first, then the max-pool, for the ImageNet stem; the bare pair for the CIFAR
    # stem of the CPU variants), block attention as ``attn``, classifier ``head``.
    names = model.state_dict()
    stem = "stem.0." if "stem.0.0.weight" in names else "stem."
    return [
        ("conv1.{rest}", stem + "0.{rest}"),
        ("bn1.{rest}", stem + "1.{rest}"),
        ("layer{i}.{j}.se.{rest}", "layer{i}.{j}.attn.{rest}"),
        ("fc.{rest}", "head.{rest}"),
    ]


def _convnext_rules(model: nn.Module) -> list[Rule]:
    # timm: stages.i.downsample.{0: LayerNorm2d, 1: conv} (stage 0 has none),
    # stages.i.blocks.j.{conv_dw, norm, mlp.fc1, mlp.fc2, gamma}, head.norm, head.fc.
    # archbench: downsample.i.{0,1}, stages.i.j.{conv_dw, norm, fc1, fc2, ls.gamma},
    # norm, head.
    return [
        ("stages.{i}.downsample.{rest}", "downsample.{i}.{rest}"),
        ("stages.{i}.blocks.{j}.mlp.{fc}.{rest}", "stages.{i}.{j}.{fc}.{rest}"),
        ("stages.{i}.blocks.{j}.gamma", "stages.{i}.{j}.ls.gamma"),
        ("stages.{i}.blocks.{j}.{rest}", "stages.{i}.{j}.{rest}"),
        ("head.norm.{rest}", "norm.{rest}"),
        ("head.fc.{rest}", "head.{rest}"),
    ]


def _mambaout_rules(model: nn.Module) -> list[Rule]:
    # timm (timm/models/mambaout.py): stem.{conv1, norm1, conv2, norm2},
    # stages.i.downsample.{conv, norm} for i > 0, stages.i.blocks.j, head.norm (after
    # pooling), head.pre_logits.{fc, norm}, head.fc. archbench: stem Sequential
    # (conv, LN, GELU, conv, LN); stages i > 0 are Sequential(conv, LN, blocks...), so
    # block j sits at index j + 2; norm, head.{fc1, norm, fc2}.
    return [
        ("stem.conv1.{rest}", "stem.0.{rest}"),
        ("stem.norm1.{rest}", "stem.1.{rest}"),
        ("stem.conv2.{rest}", "stem.3.{rest}"),
        ("stem.norm2.{rest}", "stem.4.{rest}"),
        ("stages.0.blocks.{j}.{rest}", "stages.0.{j}.{rest}"),
        ("stages.{i}.downsample.conv.{rest}", "stages.{i}.0.{rest}"),
        ("stages.{i}.downsample.norm.{rest}", "stages.{i}.1.{rest}"),
        ("stages.{i}.blocks.{j}.{rest}", "stages.{i}.{j+2}.{rest}"),
        ("head.norm.{rest}", "norm.{rest}"),
        ("head.pre_logits.fc.{rest}", "head.fc1.{rest}"),
        ("head.pre_logits.norm.{rest}", "head.norm.{rest}"),
        ("head.fc.{rest}", "head.fc2.{rest}"),
    ]


def _identity_rules(model: nn.Module) -> list[Rule]:
    # timm's MlpMixer (stem.proj, blocks.i.{norm1, mlp_tokens.fc1/fc2, norm2,
    # mlp_channels.fc1/fc2}, norm, head) uses archbench's names.
    return []


def _vit_rules(model: nn.Module) -> list[Rule]:
    # timm's VisionTransformer / DeiT names (cls_token, dist_token, pos_embed,
    # patch_embed.proj, blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2},
    # norm, head, head_dist) are archbench's names: the mapping is the identity.
    return []


_FAMILIES: dict[str, Callable[[nn.Module], list[Rule]]] = {
    "ResNet": _resnet_rules,
    "ConvNeXt": _convnext_rules,
    "VisionTransformer": _vit_rules,
    "DistilledVisionTransformer": _vit_rules,
    "MlpMixer": _identity_rules,
    "MambaOut": _mambaout_rules,
}


def timm_families() -> list[str]:
    """Model classes whose timm state-dict names archbench translates."""
    return sorted(_FAMILIES)


def has_timm_mapping(model: nn.Module) -> bool:
    return type(model).__name__ in _FAMILIES


def _rules(model: nn.Module) -> list[Rule]:
    name = type(model).__name__
    if name not in _FAMILIES:
        raise ValueError(
            f"no timm name mapping for {name}; mapped model classes: {', '.join(timm_families())}"
        )
    return _FAMILIES[name](model)


def _compile(template: str) -> tuple[re.Pattern[str], dict[str, int]]:
    """A template's regex and the offset of each index field in it."""
    regex, offsets, pos = [], {}, 0
    for field in _FIELD.finditer(template):
        regex.append(re.escape(template[pos : field.start()]))
        name, offset = field.group(1), int(field.group(2) or 0)
        regex.append(f"(?P<{name}>{_PLACEHOLDERS[name]})")
        offsets[name] = offset
        pos = field.end()
    regex.append(re.escape(template[pos:]))
    return re.compile("".join(regex)), offsets


def _rename(name: str, rules: list[tuple[str, str]]) -> str:
    for source, target in rules:
        pattern, offsets = _compile(source)
        match = pattern.fullmatch(name)
        if match:
            values = match.groupdict()
            for key, offset in offsets.items():
                if offset:
                    values[key] = str(int(values[key]) - offset)

            def fill(field: re.Match[str], values: dict[str, str] = values) -> str:
                value, offset = values[field.group(1)], int(field.group(2) or 0)
                return str(int(value) + offset) if offset else value

            return _FIELD.sub(fill, target)
    return name


def from_timm(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` with timm's names, renamed to ``model``'s (archbench) names."""
    rules = _rules(model)
    return {_rename(k, rules): v for k, v in state_dict.items()}


def to_timm(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` with archbench's names, renamed to timm's (the inverse of ``from_timm``)."""
    rules = [(arch, timm) for timm, arch in _rules(model)]
    return {_rename(k, rules): v for k, v in state_dict.items()}
