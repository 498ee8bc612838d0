"""State-dict names of timm (pytorch-image-models) translated to archbench's, per family.

timm's checkpoints name their tensors after timm's module tree; archbench's families
build the same architectures with their own module names (``stem`` instead of
``conv1``/``bn1``, ``head`` instead of ``fc``, ...). Each mapping below is a list of
name-pattern pairs ``(timm, archbench)`` written from timm's model source
(``timm/models/<family>.py``, named in each mapping's comment); a name that no pair
matches is the same in both; the first matching pair wins. The pairs are applied in
both directions, so a state dict can go from timm to archbench (loading) and back
(``to_timm``).

A mapping is chosen by the model's class (``ResNet``, ``ConvNeXt``, ``MetaFormer``, ...);
``timm_families()`` lists the mapped classes. Most families are only renamed. Three
kinds of extension, each applied in both directions, cover the rest:

- transforms: pairs of functions, one per direction, applied to the tensors whose
  archbench names match a template (MetaFormer's StarReLU scale, a 1-element vector in
  timm and a 0-d scalar in archbench). A transform only reshapes a tensor whose size
  fits, so a checkpoint of another architecture still fails the loader's shape check;
- fused tensors: one archbench tensor that timm keeps as several (the ``kv`` projection
  of XCiT's and CrossViT's class attention, timm's ``k`` and ``v``), concatenated on
  loading and split back; incomplete parts stay under timm's names and are reported;
- scopes: a module prefix renamed as a whole, with rules for the names inside it
  (NASNet's cells, which timm numbers by kind and archbench in order).

The regular expressions are the stdlib's ``re``: each mapping is a few renames, for
which no library is needed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

import torch
import torch.nn as nn

__all__ = ["from_timm", "has_timm_mapping", "timm_families", "to_timm"]

Rule = tuple[str, str]  # (timm name, archbench name) with {placeholders}
TensorFn = Callable[[torch.Tensor], torch.Tensor]
# (archbench name template, timm -> archbench tensor, archbench -> timm tensor)
Transform = tuple[str, TensorFn, TensorFn]
# (archbench name template, timm name templates): one archbench tensor that timm keeps as
# several, concatenated along the first dimension in the order listed
Fused = tuple[str, tuple[str, ...]]
# (timm module prefix, archbench module prefix, rules for the names inside it): for
# families whose repeated units are numbered differently on each side (NASNet's cells)
Scope = tuple[str, str, list[Rule]]

# {i}, {j}, {k}: a block, stage or branch index; {fc}: fc1/fc2; {m}: one module name;
# {rest}: the rest of the name. An index may carry an offset on one side: "{j+2}" is the
# other side's j plus 2.
_PLACEHOLDERS = {
    "i": r"\d+",
    "j": r"\d+",
    "k": r"\d+",
    "fc": r"fc\d",
    "m": r"[A-Za-z_]\w*",
    "rest": r".+",
}
_FIELD = re.compile(r"\{(\w+)([+-]\d+)?\}")


def _resnet_rules(model: nn.Module) -> list[Rule]:
    # timm: conv1/bn1 stem (+ max-pool), block attention as ``se`` (SE: fc1/fc2,
    # ECA: conv), classifier ``fc``. archbench: ``stem`` Sequential (the conv-bn pair
    # first, then the max-pool, for the ImageNet stem; the bare pair for the CIFAR
    # stem of the CPU variants), block attention as ``attn``, classifier ``head``.
    names = model.state_dict()
    stem = "stem.0." if "stem.0.0.weight" in names else "stem."
    rules = [
        ("conv1.{rest}", stem + "0.{rest}"),
        ("bn1.{rest}", stem + "1.{rest}"),
        ("layer{i}.{j}.se.{rest}", "layer{i}.{j}.attn.{rest}"),
        ("fc.{rest}", "head.{rest}"),
    ]
    if any(k.endswith(".conv2.select.weight") for k in names):
        # SKNet (timm/models/sknet.py, SelectiveKernelBottleneck): conv1 / conv3 are
        # ConvNormAct {conv, bn}; the SK unit conv2 has paths.k.{conv, bn} and
        # attn.{fc_reduce, bn, fc_select}. archbench: conv1/bn1, conv3/bn3,
        # conv2.branches.k.{0: conv, 1: BN}, conv2.fuse.{0: conv, 1: BN}, conv2.select.
        block = "layer{i}.{j}"
        rules[:0] = [
            (f"{block}.conv1.conv.{{rest}}", f"{block}.conv1.{{rest}}"),
            (f"{block}.conv1.bn.{{rest}}", f"{block}.bn1.{{rest}}"),
            (f"{block}.conv3.conv.{{rest}}", f"{block}.conv3.{{rest}}"),
            (f"{block}.conv3.bn.{{rest}}", f"{block}.bn3.{{rest}}"),
            (
                f"{block}.conv2.paths.{{k}}.conv.{{rest}}",
                f"{block}.conv2.branches.{{k}}.0.{{rest}}",
            ),
            (f"{block}.conv2.paths.{{k}}.bn.{{rest}}", f"{block}.conv2.branches.{{k}}.1.{{rest}}"),
            (f"{block}.conv2.attn.fc_reduce.{{rest}}", f"{block}.conv2.fuse.0.{{rest}}"),
            (f"{block}.conv2.attn.bn.{{rest}}", f"{block}.conv2.fuse.1.{{rest}}"),
            (f"{block}.conv2.attn.fc_select.{{rest}}", f"{block}.conv2.select.{{rest}}"),
        ]
    return rules


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


def _prefix_of(model: nn.Module, *candidates: str) -> str:
    """The first of ``candidates`` (module prefixes) that names a weight of ``model``
    (the last one when none does: its rules then match nothing, and a timm checkpoint
    fails the loader's strict check with the names it could not place)."""
    names = model.state_dict()
    return next((p for p in candidates if p + "weight" in names), candidates[-1])


def _regnet_rules(model: nn.Module) -> list[Rule]:
    # timm (timm/models/regnet.py): stem.{conv, bn}, stages s1..s4 with blocks b1..bN
    # (1-based), each conv a ConvNormAct {conv, bn}, the projection shortcut
    # ``downsample``, SE as se.{fc1, fc2}, head.fc. archbench: stages.i.j (0-based),
    # ConvNormAct {conv, norm}, ``shortcut``, head.
    return [
        ("stem.bn.{rest}", "stem.norm.{rest}"),
        ("s{i+1}.b{j+1}.downsample.conv.{rest}", "stages.{i}.{j}.shortcut.conv.{rest}"),
        ("s{i+1}.b{j+1}.downsample.bn.{rest}", "stages.{i}.{j}.shortcut.norm.{rest}"),
        ("s{i+1}.b{j+1}.{m}.bn.{rest}", "stages.{i}.{j}.{m}.norm.{rest}"),
        ("s{i+1}.b{j+1}.{rest}", "stages.{i}.{j}.{rest}"),
        ("head.fc.{rest}", "head.{rest}"),
    ]


def _res2net_rules(model: nn.Module) -> list[Rule]:
    # timm (timm/models/res2net.py, a ResNet of Bottle2neck blocks): conv1/bn1 stem,
    # layer1..4, in a block conv1/bn1, the scale branches' convs.k and bns.k, conv3/bn3,
    # downsample.{0: conv, 1: bn}, fc. archbench: stem ConvNormAct, stages.i.j with
    # ConvNormAct {conv, norm} for each of them, head.
    stem = _prefix_of(model, "stem.0.conv.", "stem.conv.")[: -len("conv.")]
    return [
        ("conv1.{rest}", stem + "conv.{rest}"),
        ("bn1.{rest}", stem + "norm.{rest}"),
        ("layer{i+1}.{j}.convs.{k}.{rest}", "stages.{i}.{j}.convs.{k}.conv.{rest}"),
        ("layer{i+1}.{j}.bns.{k}.{rest}", "stages.{i}.{j}.convs.{k}.norm.{rest}"),
        ("layer{i+1}.{j}.downsample.0.{rest}", "stages.{i}.{j}.downsample.conv.{rest}"),
        ("layer{i+1}.{j}.downsample.1.{rest}", "stages.{i}.{j}.downsample.norm.{rest}"),
        ("layer{i+1}.{j}.conv{k}.{rest}", "stages.{i}.{j}.conv{k}.conv.{rest}"),
        ("layer{i+1}.{j}.bn{k}.{rest}", "stages.{i}.{j}.conv{k}.norm.{rest}"),
        ("fc.{rest}", "head.{rest}"),
    ]


def _resnest_rules(model: nn.Module) -> list[Rule]:
    # timm (timm/models/resnest.py, a ResNet of ResNestBottleneck blocks): the deep stem
    # conv1 = Sequential(conv, bn, act, conv, bn, act, conv) then bn1; a block's split
    # attention conv2.{conv, bn0, fc1, bn1, fc2}; downsample.{0: avg-pool, 1: conv,
    # 2: bn}; fc. archbench: stem.k ConvNormAct {conv, norm}; conv2.{conv, fc1} are
    # ConvNormAct, fc2 a conv; downsample.{0: pool, 1: ConvNormAct}; head.
    names = model.state_dict()
    n_stem = sum(1 for k in names if k.startswith("stem.") and k.endswith(".conv.weight"))
    rules: list[Rule] = []
    for k in range(n_stem):
        rules.append((f"conv1.{3 * k}.{{rest}}", f"stem.{k}.conv.{{rest}}"))
        norm = "bn1" if k == n_stem - 1 else f"conv1.{3 * k + 1}"
        rules.append((f"{norm}.{{rest}}", f"stem.{k}.norm.{{rest}}"))
    block = "layer{i+1}.{j}"
    ours = "stages.{i}.{j}"
    rules += [
        (f"{block}.conv2.conv.{{rest}}", f"{ours}.conv2.conv.conv.{{rest}}"),
        (f"{block}.conv2.bn0.{{rest}}", f"{ours}.conv2.conv.norm.{{rest}}"),
        (f"{block}.conv2.fc1.{{rest}}", f"{ours}.conv2.fc1.conv.{{rest}}"),
        (f"{block}.conv2.bn1.{{rest}}", f"{ours}.conv2.fc1.norm.{{rest}}"),
        (f"{block}.conv2.fc2.{{rest}}", f"{ours}.conv2.fc2.{{rest}}"),
        (f"{block}.downsample.1.{{rest}}", f"{ours}.downsample.1.conv.{{rest}}"),
        (f"{block}.downsample.2.{{rest}}", f"{ours}.downsample.1.norm.{{rest}}"),
        (f"{block}.conv{{k}}.{{rest}}", f"{ours}.conv{{k}}.conv.{{rest}}"),
        (f"{block}.bn{{k}}.{{rest}}", f"{ours}.conv{{k}}.norm.{{rest}}"),
        ("fc.{rest}", "head.{rest}"),
    ]
    return rules


def _resnetrs_rules(model: nn.Module) -> list[Rule]:
    # timm (timm/models/resnet.py, resnetrs*): the deep stem conv1 = Sequential(conv, bn,
    # act, conv, bn, act, conv) then bn1, and the max-pool replaced by
    # maxpool = Sequential(3x3/2 conv, bn, act); blocks conv1..3 / bn1..3, se.{fc1, fc2},
    # downsample.{0: avg-pool, 1: conv, 2: bn}; fc. archbench: stem.0..2 ConvNormAct and
    # stem.3 for the pooling conv (absent in the CPU variant), stages.i.j, head.
    names = model.state_dict()
    rules: list[Rule] = [
        ("conv1.0.{rest}", "stem.0.conv.{rest}"),
        ("conv1.1.{rest}", "stem.0.norm.{rest}"),
        ("conv1.3.{rest}", "stem.1.conv.{rest}"),
        ("conv1.4.{rest}", "stem.1.norm.{rest}"),
        ("conv1.6.{rest}", "stem.2.conv.{rest}"),
        ("bn1.{rest}", "stem.2.norm.{rest}"),
    ]
    if "stem.3.conv.weight" in names:
        rules += [
            ("maxpool.0.{rest}", "stem.3.conv.{rest}"),
            ("maxpool.1.{rest}", "stem.3.norm.{rest}"),
        ]
    block, ours = "layer{i+1}.{j}", "stages.{i}.{j}"
    rules += [
        (f"{block}.downsample.1.{{rest}}", f"{ours}.downsample.1.conv.{{rest}}"),
        (f"{block}.downsample.2.{{rest}}", f"{ours}.downsample.1.norm.{{rest}}"),
        (f"{block}.conv{{k}}.{{rest}}", f"{ours}.conv{{k}}.conv.{{rest}}"),
        (f"{block}.bn{{k}}.{{rest}}", f"{ours}.conv{{k}}.norm.{{rest}}"),
        (f"{block}.{{rest}}", f"{ours}.{{rest}}"),
        ("fc.{rest}", "head.{rest}"),
    ]
    return rules


def _vgg_rules(model: nn.Module) -> list[Rule]:
    # timm (timm/models/vgg.py): one ``features`` Sequential of conv, [BN,] ReLU per
    # layer and a max-pool after each stage; pre_logits.{fc1 (7x7 conv), fc2 (1x1 conv)};
    # head.fc. archbench: stages.i.j ConvNormAct {conv, norm}, fc Sequential with the two
    # convolutions at 0 and 3, head.
    names = model.state_dict()
    rules: list[Rule] = []
    index = 0
    for i, stage in enumerate(model.stages):
        for j in range(sum(1 for m in stage if hasattr(m, "conv"))):
            bn = f"stages.{i}.{j}.norm.weight" in names
            rules.append((f"features.{index}.{{rest}}", f"stages.{i}.{j}.conv.{{rest}}"))
            if bn:
                rules.append((f"features.{index + 1}.{{rest}}", f"stages.{i}.{j}.norm.{{rest}}"))
            index += 3 if bn else 2
        index += 1  # the stage's max-pool
    return rules + [
        ("pre_logits.fc1.{rest}", "fc.0.{rest}"),
        ("pre_logits.fc2.{rest}", "fc.3.{rest}"),
        ("head.fc.{rest}", "head.{rest}"),
    ]


def _cspnet_rules(model: nn.Module) -> list[Rule]:
    # timm (timm/models/cspnet.py): stem.conv1 ConvNormAct {conv, bn}; a stage's
    # conv_down, conv_exp (the expansion whose output is split), blocks.j.{conv1, conv2},
    # conv_transition_b (the dense part's transition), conv_transition (after the
    # concatenation); head.fc. archbench: the same layout with ``norm`` for ``bn`` and
    # conv_split, transition_part, transition_fuse; head.
    stem = _prefix_of(model, "stem.0.conv.", "stem.conv.")[: -len("conv.")]
    rules: list[Rule] = [
        ("stem.conv1.conv.{rest}", stem + "conv.{rest}"),
        ("stem.conv1.bn.{rest}", stem + "norm.{rest}"),
    ]
    for theirs, ours in (
        ("conv_exp", "conv_split"),
        ("conv_transition_b", "transition_part"),
        ("conv_transition", "transition_fuse"),
        ("conv_down", "conv_down"),
    ):
        rules.append((f"stages.{{i}}.{theirs}.conv.{{rest}}", f"stages.{{i}}.{ours}.conv.{{rest}}"))
        rules.append((f"stages.{{i}}.{theirs}.bn.{{rest}}", f"stages.{{i}}.{ours}.norm.{{rest}}"))
    rules += [
        ("stages.{i}.blocks.{j}.{m}.bn.{rest}", "stages.{i}.blocks.{j}.{m}.norm.{rest}"),
        ("head.fc.{rest}", "head.{rest}"),
    ]
    return rules


def _vovnet_rules(model: nn.Module) -> list[Rule]:
    # timm (timm/models/vovnet.py): stem.k ConvNormAct {conv, bn} or, in the depthwise
    # variants, SeparableConvNormAct {conv_dw, conv_pw, bn}; stages.i.blocks.j (an OSA
    # module: conv_reduction, conv_mid.k, conv_concat, attn.fc for eSE); head.fc.
    # archbench: separable convs as {conv_dw, conv_pw: ConvNormAct}; stages.i.j with
    # reduce, convs.k, fuse, attn; head.
    names = model.state_dict()
    rules: list[Rule] = []
    k = 0
    while f"stem.{k}.conv.weight" in names or f"stem.{k}.conv_dw.weight" in names:
        if f"stem.{k}.conv_dw.weight" in names:
            rules.append((f"stem.{k}.conv_pw.{{rest}}", f"stem.{k}.conv_pw.conv.{{rest}}"))
            rules.append((f"stem.{k}.bn.{{rest}}", f"stem.{k}.conv_pw.norm.{{rest}}"))
        else:
            rules.append((f"stem.{k}.bn.{{rest}}", f"stem.{k}.norm.{{rest}}"))
        k += 1
    # archbench's stages after the first start with their max-pool, so their blocks sit
    # one index later than timm's (whose pool is a separate ``pool`` attribute).
    firsts: dict[int, int] = {}
    for n in names:
        parts = n.split(".")
        if parts[0] == "stages":
            i, j = int(parts[1]), int(parts[2])
            firsts[i] = min(firsts.get(i, j), j)
    dw = any(".convs.0.conv_dw." in n for n in names)
    for i, first in sorted(firsts.items()):
        block, ours = f"stages.{i}.blocks.{{j}}", f"stages.{i}.{{j+{first}}}"
        mid = f"{block}.conv_mid.{{k}}"
        if dw:
            rules += [
                (f"{mid}.conv_pw.{{rest}}", f"{ours}.convs.{{k}}.conv_pw.conv.{{rest}}"),
                (f"{mid}.bn.{{rest}}", f"{ours}.convs.{{k}}.conv_pw.norm.{{rest}}"),
                (f"{mid}.conv_dw.{{rest}}", f"{ours}.convs.{{k}}.conv_dw.{{rest}}"),
            ]
        else:
            rules += [
                (f"{mid}.conv.{{rest}}", f"{ours}.convs.{{k}}.conv.{{rest}}"),
                (f"{mid}.bn.{{rest}}", f"{ours}.convs.{{k}}.norm.{{rest}}"),
            ]
        rules += [
            (f"{block}.conv_reduction.conv.{{rest}}", f"{ours}.reduce.conv.{{rest}}"),
            (f"{block}.conv_reduction.bn.{{rest}}", f"{ours}.reduce.norm.{{rest}}"),
            (f"{block}.conv_concat.conv.{{rest}}", f"{ours}.fuse.conv.{{rest}}"),
            (f"{block}.conv_concat.bn.{{rest}}", f"{ours}.fuse.norm.{{rest}}"),
            (f"{block}.{{rest}}", f"{ours}.{{rest}}"),
        ]
    rules += [
        ("head.fc.{rest}", "head.{rest}"),
    ]
    return rules


def _inceptionnext_rules(model: nn.Module) -> list[Rule]:
    # timm (timm/models/inception_next.py): stages.i.downsample.{0: BN, 1: conv} for
    # i > 0, stages.i.blocks.j.{token_mixer, norm, mlp, gamma}; the MLP head's names
    # (head.fc1, head.norm, head.fc2) are archbench's. archbench: stages i > 0 are
    # Sequential(downsample, blocks...), so block j sits at index j + 1; layer scale as
    # ls.gamma.
    return [
        ("stages.0.blocks.{j}.gamma", "stages.0.{j}.ls.gamma"),
        ("stages.0.blocks.{j}.{rest}", "stages.0.{j}.{rest}"),
        ("stages.{i}.downsample.{rest}", "stages.{i}.0.{rest}"),
        ("stages.{i}.blocks.{j}.gamma", "stages.{i}.{j+1}.ls.gamma"),
        ("stages.{i}.blocks.{j}.{rest}", "stages.{i}.{j+1}.{rest}"),
    ]


def _convmixer_rules(model: nn.Module) -> list[Rule]:
    # timm (timm/models/convmixer.py): blocks.i = Sequential(Residual(fn=Sequential(
    # depthwise conv, GELU, BN)), 1x1 conv, GELU, BN); stem and head as archbench's.
    return [
        ("blocks.{i}.0.fn.0.{rest}", "blocks.{i}.dwconv.{rest}"),
        ("blocks.{i}.0.fn.2.{rest}", "blocks.{i}.norm1.{rest}"),
        ("blocks.{i}.1.{rest}", "blocks.{i}.pwconv.{rest}"),
        ("blocks.{i}.3.{rest}", "blocks.{i}.norm2.{rest}"),
    ]


def _mobileone_rules(model: nn.Module) -> list[Rule]:
    # timm (timm/models/byobnet.py, MobileOneBlock in its unfused form): stem and
    # stages.i.j with conv_kxk.k (the over-parameterized branches), conv_scale (1x1),
    # identity (BN skip), attn (SE); head.fc. archbench (the official layout): stage0 (the
    # stem), stage1..4 with rbr_conv.k, rbr_scale, rbr_skip, se; head.
    return [
        ("stem.conv_kxk.{rest}", "stage0.rbr_conv.{rest}"),
        ("stem.conv_scale.{rest}", "stage0.rbr_scale.{rest}"),
        ("stem.identity.{rest}", "stage0.rbr_skip.{rest}"),
        ("stages.{i}.{j}.conv_kxk.{rest}", "stage{i+1}.{j}.rbr_conv.{rest}"),
        ("stages.{i}.{j}.conv_scale.{rest}", "stage{i+1}.{j}.rbr_scale.{rest}"),
        ("stages.{i}.{j}.identity.{rest}", "stage{i+1}.{j}.rbr_skip.{rest}"),
        ("stages.{i}.{j}.attn.{rest}", "stage{i+1}.{j}.se.{rest}"),
        ("head.fc.{rest}", "head.{rest}"),
    ]


def _conv_bn_rules(pairs: list[tuple[str, str]]) -> list[Rule]:
    """Rules for timm BasicConv2d / ConvNormAct modules (``conv``, ``bn``) that archbench
    builds as ConvNormAct (``conv``, ``norm``): (timm module, archbench module) pairs."""
    rules: list[Rule] = []
    for theirs, ours in pairs:
        rules.append((f"{theirs}.conv.{{rest}}", f"{ours}.conv.{{rest}}"))
        rules.append((f"{theirs}.bn.{{rest}}", f"{ours}.norm.{{rest}}"))
    return rules


def _block_count(model: nn.Module, stage: str) -> int:
    return len(getattr(model, stage))


# timm's Inception-v3 branch names (inception_v3.py: InceptionA ... InceptionE) and the
# branch index, and index within the branch, of archbench's builders (inception.py).
_V3_BLOCKS = {
    "A": [
        ("branch1x1", "0"),
        ("branch5x5_1", "1.0"),
        ("branch5x5_2", "1.1"),
        ("branch3x3dbl_1", "2.0"),
        ("branch3x3dbl_2", "2.1"),
        ("branch3x3dbl_3", "2.2"),
        ("branch_pool", "3.1"),
    ],
    "B": [
        ("branch3x3", "0"),
        ("branch3x3dbl_1", "1.0"),
        ("branch3x3dbl_2", "1.1"),
        ("branch3x3dbl_3", "1.2"),
    ],
    "C": [
        ("branch1x1", "0"),
        ("branch7x7_1", "1.0"),
        ("branch7x7_2", "1.1"),
        ("branch7x7_3", "1.2"),
        *[(f"branch7x7dbl_{n + 1}", f"2.{n}") for n in range(5)],
        ("branch_pool", "3.1"),
    ],
    "D": [
        ("branch3x3_1", "0.0"),
        ("branch3x3_2", "0.1"),
        *[(f"branch7x7x3_{n + 1}", f"1.{n}") for n in range(4)],
    ],
    "E": [
        ("branch1x1", "0"),
        ("branch3x3_1", "1.0"),
        ("branch3x3_2a", "1.1.a"),
        ("branch3x3_2b", "1.1.b"),
        ("branch3x3dbl_1", "2.0"),
        ("branch3x3dbl_2", "2.1"),
        ("branch3x3dbl_3a", "2.2.a"),
        ("branch3x3dbl_3b", "2.2.b"),
        ("branch_pool", "3.1"),
    ],
}


def _inception_v3_rules(model: nn.Module) -> list[Rule]:
    # timm (timm/models/inception_v3.py): the stem convs Conv2d_1a_3x3 ... Conv2d_4a_3x3,
    # Mixed_5b-5d (InceptionA), Mixed_6a (B), Mixed_6b-6e (C), Mixed_7a (D), Mixed_7b-7c
    # (E), each conv a BasicConv2d {conv, bn}; AuxLogits; fc. archbench: stem.k (the
    # convs at their Sequential indices, pools between), stage1 = A blocks, stage2 = B
    # then C blocks, stage3 = D then E blocks, branches.n[.m], head. A model with fewer
    # blocks (the CPU variant) takes timm's names in the same order.
    stem_names = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1"]
    stem_names.append("Conv2d_4a_3x3")
    convs = [n for n, m in model.stem.named_children() if hasattr(m, "conv")]
    pairs = [(theirs, f"stem.{ours}") for theirs, ours in zip(stem_names, convs)]
    layout = [
        ("stage1", [("Mixed_5" + "bcd"[j], "A") for j in range(3)]),
        ("stage2", [("Mixed_6a", "B")] + [("Mixed_6" + "bcde"[j], "C") for j in range(4)]),
        ("stage3", [("Mixed_7a", "D")] + [("Mixed_7" + "bc"[j], "E") for j in range(2)]),
    ]
    for stage, blocks in layout:
        for j, (theirs, kind) in enumerate(blocks[: _block_count(model, stage)]):
            for branch, idx in _V3_BLOCKS[kind]:
                pairs.append((f"{theirs}.{branch}", f"{stage}.{j}.branches.{idx}"))
    pairs += [("AuxLogits.conv0", "aux.conv0"), ("AuxLogits.conv1", "aux.conv1")]
    return _conv_bn_rules(pairs) + [
        ("AuxLogits.fc.{rest}", "aux.fc.{rest}"),
        ("fc.{rest}", "head.{rest}"),
    ]


def _branch_rules(theirs: str, ours: str) -> list[Rule]:
    """timm's ``{theirs}.branch{k}[.{i}].{conv,bn}`` as ``{ours}.{k}[.{i}].{conv,norm}``."""
    return [
        (f"{theirs}.branch{{k}}.{{i}}.conv.{{rest}}", f"{ours}.{{k}}.{{i}}.conv.{{rest}}"),
        (f"{theirs}.branch{{k}}.{{i}}.bn.{{rest}}", f"{ours}.{{k}}.{{i}}.norm.{{rest}}"),
        (f"{theirs}.branch{{k}}.conv.{{rest}}", f"{ours}.{{k}}.conv.{{rest}}"),
        (f"{theirs}.branch{{k}}.bn.{{rest}}", f"{ours}.{{k}}.norm.{{rest}}"),
    ]


def _inception_resnet_v2_rules(model: nn.Module) -> list[Rule]:
    # timm (timm/models/inception_resnet_v2.py): conv2d_1a ... conv2d_4a, mixed_5b, then
    # repeat (Block35 x 10), mixed_6a, repeat_1 (Block17 x 20), mixed_7a, repeat_2 (Block8
    # x 9), block8 (the last Block8, without ReLU), conv2d_7b, classif; branches are
    # branch0..3 (a BasicConv2d {conv, bn} or a Sequential of them) and a residual block's
    # projection is ``conv2d``. archbench: stem (convs, then the mixed_5b block), stage1 =
    # the Block35s, stage2 = mixed_6a then the Block17s, stage3 = mixed_7a, the Block8s
    # and conv2d_7b; residual blocks keep their branches under branches.branches and the
    # projection as ``up``; head.
    children = list(model.stem.named_children())
    convs = [n for n, m in children if hasattr(m, "conv")]
    stem_names = ["conv2d_1a", "conv2d_2a", "conv2d_2b", "conv2d_3b", "conv2d_4a"]
    mixed = next(n for n, m in children if hasattr(m, "branches"))
    n3 = _block_count(model, "stage3")  # mixed_7a, Block8 x (n3 - 3), block8, conv2d_7b
    last8 = n3 - 2
    rules = _conv_bn_rules([(t, f"stem.{o}") for t, o in zip(stem_names, convs)])
    rules += _branch_rules("mixed_5b", f"stem.{mixed}.branches")
    for theirs, stage, offset in (("repeat", "stage1", 0), ("repeat_1", "stage2", 1)):
        ours = f"{stage}.{{j+{offset}}}"
        rules += _branch_rules(f"{theirs}.{{j}}", f"{ours}.branches.branches")
        rules.append((f"{theirs}.{{j}}.conv2d.{{rest}}", f"{ours}.up.{{rest}}"))
    rules += _branch_rules("block8", f"stage3.{last8}.branches.branches")
    rules.append(("block8.conv2d.{rest}", f"stage3.{last8}.up.{{rest}}"))
    rules += _branch_rules("repeat_2.{j}", "stage3.{j+1}.branches.branches")
    rules.append(("repeat_2.{j}.conv2d.{rest}", "stage3.{j+1}.up.{rest}"))
    rules += _branch_rules("mixed_6a", "stage2.0.branches")
    rules += _branch_rules("mixed_7a", "stage3.0.branches")
    rules += _conv_bn_rules([("conv2d_7b", f"stage3.{n3 - 1}")])
    rules.append(("classif.{rest}", "head.{rest}"))
    return rules


def _nasnet_rules(model: nn.Module) -> list[Rule]:
    # timm (timm/models/nasnet.py, NASNet-A Large): conv0 {conv, bn}, the cells (see
    # _nasnet_scopes), last_linear. archbench: stem Sequential (conv, BN), cells.n, head.
    return [
        ("conv0.conv.{rest}", "stem.0.{rest}"),
        ("conv0.bn.{rest}", "stem.1.{rest}"),
        ("last_linear.{rest}", "head.{rest}"),
    ]


# Inside a NASNet cell. timm: conv_1x1 (the input's ReLU-conv-BN), conv_prev_1x1 or the
# factorized reduction path_1 / path_2 / final_path_bn (the previous state's adjustment),
# and the operations comb_iter_c_left / comb_iter_c_right of the five combinations, each
# separable op as separable_1, bn_sep_1, separable_2, bn_sep_2. archbench: base and prev
# Sequentials (ReLU first), ops.k for combination k // 2 (left, then right), a separable
# op as one Sequential (ReLU, depthwise, pointwise, BN, ReLU, depthwise, pointwise, BN).
_SEPARABLE = [
    ("separable_1.depthwise_conv2d", 1),
    ("separable_1.pointwise_conv2d", 2),
    ("bn_sep_1", 3),
    ("separable_2.depthwise_conv2d", 5),
    ("separable_2.pointwise_conv2d", 6),
    ("bn_sep_2", 7),
]
_NASNET_CELL: list[Rule] = [
    ("conv_1x1.conv.{rest}", "base.1.{rest}"),
    ("conv_1x1.bn.{rest}", "base.2.{rest}"),
    ("path_1.conv.{rest}", "prev.1.path1.{rest}"),
    ("path_2.conv.{rest}", "prev.1.path2.{rest}"),
    ("final_path_bn.{rest}", "prev.1.bn.{rest}"),
    ("conv_prev_1x1.conv.{rest}", "prev.1.{rest}"),
    ("conv_prev_1x1.bn.{rest}", "prev.2.{rest}"),
] + [
    (f"comb_iter_{k // 2}_{('left', 'right')[k % 2]}.{part}.{{rest}}", f"ops.{k}.{i}.{{rest}}")
    for k in range(10)
    for part, i in _SEPARABLE
]


def _nasnet_scopes(model: nn.Module) -> list[Scope]:
    # timm numbers the cells by kind: cell_stem_0/1, then cell_n and reduction_cell_n in
    # network order; archbench numbers them all as cells.n.
    scopes: list[Scope] = []
    normal = reduction = 0
    for n, cell in enumerate(model.cells):
        if n < getattr(model, "num_stem_cells", 0):
            name = f"cell_stem_{n}"
        elif cell.reduction:
            name, reduction = f"reduction_cell_{reduction}", reduction + 1
        else:
            name, normal = f"cell_{normal}", normal + 1
        scopes.append((name, f"cells.{n}", _NASNET_CELL))
    return scopes


def _to_scalar(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(()) if t.numel() == 1 else t


def _to_vector1(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(1) if t.ndim == 0 else t


def _linear_to_conv1x1(t: torch.Tensor) -> torch.Tensor:
    return t[:, :, None, None] if t.ndim == 2 else t


def _conv1x1_to_linear(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1) if t.ndim == 4 and t.shape[2:] == (1, 1) else t


def _metaformer_rules(model: nn.Module) -> list[Rule]:
    # timm (timm/models/metaformer.py): stem.{conv, norm}; stages.i.downsample.{norm,
    # conv} for i > 0; stages.i.blocks.j (attention mixers keep qkv/proj directly under
    # token_mixer); head.norm, then head.fc (Linear, or an MlpHead with fc1, norm, fc2).
    # archbench: stem Sequential (conv, LN), downsample.i Sequential (LN, conv), stages.i.j
    # (attention wrapped as token_mixer.attn), norm, head (Linear or fc1, norm, fc2).
    rules: list[Rule] = [
        ("stem.conv.{rest}", "stem.0.{rest}"),
        ("stem.norm.{rest}", "stem.1.{rest}"),
        ("stages.{i}.downsample.norm.{rest}", "downsample.{i}.0.{rest}"),
        ("stages.{i}.downsample.conv.{rest}", "downsample.{i}.1.{rest}"),
    ]
    for i, mixer in enumerate(getattr(model, "token_mixers", ())):
        if mixer == "attention":
            rules.append(
                (
                    f"stages.{i}.blocks.{{j}}.token_mixer.{{rest}}",
                    f"stages.{i}.{{j}}.token_mixer.attn.{{rest}}",
                )
            )
    rules += [
        ("stages.{i}.blocks.{j}.{rest}", "stages.{i}.{j}.{rest}"),
        ("head.norm.{rest}", "norm.{rest}"),
    ]
    if getattr(model, "head_type", "linear") == "mlp":
        rules += [
            ("head.fc.{fc}.{rest}", "head.{fc}.{rest}"),
            ("head.fc.norm.{rest}", "head.norm.{rest}"),
        ]
    else:
        rules.append(("head.fc.{rest}", "head.{rest}"))
    return rules


def _metaformer_transforms(model: nn.Module) -> list[Transform]:
    # StarReLU's scale and bias are 1-element vectors in timm (and in the official
    # release), 0-d scalars in archbench's StarReLU. In attention stages timm runs the
    # block MLP channels-last with nn.Linear (out, in) weights where archbench keeps the
    # 1x1 convolution (out, in, 1, 1) of the other stages.
    out: list[Transform] = [
        (f"stages.{{i}}.{{j}}.{m}.{p}", _to_scalar, _to_vector1)
        for m in ("mlp.act", "token_mixer.act1")
        for p in ("scale", "bias")
    ]
    for i, mixer in enumerate(getattr(model, "token_mixers", ())):
        if mixer == "attention":
            out.append(
                (f"stages.{i}.{{j}}.mlp.{{fc}}.weight", _linear_to_conv1x1, _conv1x1_to_linear)
            )
    return out


def _xcit_rules(model: nn.Module) -> list[Rule]:
    # timm (timm/models/xcit.py): the patch embedding is Sequential(conv3x3, GELU, ...)
    # where each conv3x3 is Sequential(conv, BN): index 2k holds the k-th conv-BN pair.
    # archbench's ConvPatchEmbed is one flat Sequential(conv, BN, GELU, ...): the k-th
    # conv at 3k, its BN at 3k + 1. Everything else has timm's names.
    names = model.state_dict()
    n = sum(1 for k, v in names.items() if k.startswith("patch_embed.proj.") and v.ndim == 4)
    rules: list[Rule] = []
    for k in range(n):
        rules.append((f"patch_embed.proj.{2 * k}.0.{{rest}}", f"patch_embed.proj.{3 * k}.{{rest}}"))
        rules.append(
            (f"patch_embed.proj.{2 * k}.1.{{rest}}", f"patch_embed.proj.{3 * k + 1}.{{rest}}")
        )
    return rules


def _xcit_fused(model: nn.Module) -> list[Fused]:
    # timm's class attention (from CaiT) has separate k and v projections; archbench's
    # ClassAttention computes both with one ``kv`` Linear (k first, then v).
    return [
        (
            "cls_attn_blocks.{i}.attn.kv.{rest}",
            ("cls_attn_blocks.{i}.attn.k.{rest}", "cls_attn_blocks.{i}.attn.v.{rest}"),
        )
    ]


def _crossvit_rules(model: nn.Module) -> list[Rule]:
    # timm (timm/models/crossvit.py): pos_embed_k / cls_token_k per branch; blocks.i (a
    # multi-scale block) with blocks.k.j (branch k's transformer blocks), projs.k and
    # revert_projs.k (LN, GELU, Linear into and out of the other branch's width),
    # fusion.k.{norm1, attn.{wq, wk, wv, proj}}; norm.k, head.k. archbench: the same
    # parameters as pos_embed.k, cls_token.k, blocks.i.branches.k.j, blocks.i.fusion.k.
    # {proj, norm, attn.{q, kv, proj}, revert}, norms.k, heads.k.
    return [
        ("pos_embed_{k}", "pos_embed.{k}"),
        ("cls_token_{k}", "cls_token.{k}"),
        ("blocks.{i}.blocks.{k}.{rest}", "blocks.{i}.branches.{k}.{rest}"),
        ("blocks.{i}.projs.{k}.{rest}", "blocks.{i}.fusion.{k}.proj.{rest}"),
        ("blocks.{i}.revert_projs.{k}.{rest}", "blocks.{i}.fusion.{k}.revert.{rest}"),
        ("blocks.{i}.fusion.{k}.norm1.{rest}", "blocks.{i}.fusion.{k}.norm.{rest}"),
        ("blocks.{i}.fusion.{k}.attn.wq.{rest}", "blocks.{i}.fusion.{k}.attn.q.{rest}"),
        ("norm.{k}.{rest}", "norms.{k}.{rest}"),
        ("head.{k}.{rest}", "heads.{k}.{rest}"),
    ]


def _crossvit_fused(model: nn.Module) -> list[Fused]:
    fusion = "blocks.{i}.fusion.{k}.attn"
    return [(f"{fusion}.kv.{{rest}}", (f"{fusion}.wk.{{rest}}", f"{fusion}.wv.{{rest}}"))]


_FAMILIES: dict[str, Callable[[nn.Module], list[Rule]]] = {
    "ResNet": _resnet_rules,
    "ConvNeXt": _convnext_rules,
    "VisionTransformer": _vit_rules,
    "DistilledVisionTransformer": _vit_rules,
    "MlpMixer": _identity_rules,
    "MambaOut": _mambaout_rules,
    "MetaFormer": _metaformer_rules,
    "RegNet": _regnet_rules,
    "Res2Net": _res2net_rules,
    "ResNeSt": _resnest_rules,
    "CSPNet": _cspnet_rules,
    "VoVNet": _vovnet_rules,
    "ConViT": _identity_rules,
    "InceptionNeXt": _inceptionnext_rules,
    "ConvMixer": _convmixer_rules,
    "MobileOne": _mobileone_rules,
    "XCiT": _xcit_rules,
    "CrossViT": _crossvit_rules,
    "InceptionV3": _inception_v3_rules,
    "InceptionResNetV2": _inception_resnet_v2_rules,
    "NASNet": _nasnet_rules,
    "ResNetRS": _resnetrs_rules,
    "VGG": _vgg_rules,
}

# Families whose repeated units are renamed inside a prefix (see ``Scope``).
_SCOPES: dict[str, Callable[[nn.Module], list[Scope]]] = {
    "NASNet": _nasnet_scopes,
}

# Families whose tensors also change layout (see the module docstring).
_TRANSFORMS: dict[str, Callable[[nn.Module], list[Transform]]] = {
    "MetaFormer": _metaformer_transforms,
}

# Families where one archbench tensor is several of timm's (see the module docstring).
_FUSED: dict[str, Callable[[nn.Module], list[Fused]]] = {
    "XCiT": _xcit_fused,
    "CrossViT": _crossvit_fused,
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


@lru_cache(maxsize=4096)
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


def _transform(
    name: str, value: torch.Tensor, transforms: list[Transform], side: int
) -> torch.Tensor:
    """``value`` (archbench name ``name``) through the first matching transform's ``side``."""
    for template, *fns in transforms:
        if _compile(template)[0].fullmatch(name):
            return fns[side](value)
    return value


def _fill(template: str, values: dict[str, str]) -> str:
    return _FIELD.sub(lambda field: values[field.group(1)], template)


def _fuse(
    state_dict: dict[str, torch.Tensor], fused: list[Fused]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """timm's parts of each fused tensor, concatenated; and the other tensors.

    A fused tensor whose parts are not all present is left as its parts, under timm's
    names, so that the loader reports them.
    """
    parts: dict[str, dict[int, tuple[str, torch.Tensor]]] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        for ours, theirs in fused:
            hit = next(
                ((n, m) for n, t in enumerate(theirs) if (m := _compile(t)[0].fullmatch(key))),
                None,
            )
            if hit is not None:
                n, match = hit
                parts.setdefault(_fill(ours, match.groupdict()), {})[n] = (key, value)
                break
        else:
            rest[key] = value
    joined: dict[str, torch.Tensor] = {}
    for name, got in parts.items():
        count = next(len(t) for o, t in fused if _compile(o)[0].fullmatch(name))
        if len(got) == count and len({v.shape[1:] for _, v in got.values()}) == 1:
            joined[name] = torch.cat([got[n][1] for n in range(count)], dim=0)
        else:
            rest.update(dict(got.values()))
    return joined, rest


def _split(name: str, value: torch.Tensor, fused: list[Fused]) -> dict[str, torch.Tensor] | None:
    """An archbench fused tensor as timm's parts (None when ``name`` is not fused)."""
    for ours, theirs in fused:
        match = _compile(ours)[0].fullmatch(name)
        if match and value.ndim and value.shape[0] % len(theirs) == 0:
            chunks = value.chunk(len(theirs), dim=0)
            return {_fill(t, match.groupdict()): c for t, c in zip(theirs, chunks)}
    return None


def _rename_scoped(name: str, rules: list[Rule], scopes: list[Scope], side: int) -> str:
    """``name`` through the scope whose prefix it starts with, else through ``rules``.

    ``side`` 0 goes from timm to archbench (rules and scopes as written), 1 back.
    """
    for theirs, ours, inner in scopes:
        src, dst = (theirs, ours) if side == 0 else (ours, theirs)
        if name.startswith(src + "."):
            pairs = inner if side == 0 else [(b, a) for a, b in inner]
            return f"{dst}.{_rename(name[len(src) + 1 :], pairs)}"
    return _rename(name, rules)


def _extras(model: nn.Module) -> tuple[list[Transform], list[Fused]]:
    name = type(model).__name__
    transforms = _TRANSFORMS[name](model) if name in _TRANSFORMS else []
    return transforms, (_FUSED[name](model) if name in _FUSED else [])


def from_timm(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` with timm's names, renamed to ``model``'s (archbench) names."""
    rules = _rules(model)
    transforms, fused = _extras(model)
    scopes = _SCOPES[type(model).__name__](model) if type(model).__name__ in _SCOPES else []
    joined, state_dict = _fuse(state_dict, fused)
    out = dict(joined)
    for key, value in state_dict.items():
        name = _rename_scoped(key, rules, scopes, 0)
        out[name] = _transform(name, value, transforms, 0)
    return out


def to_timm(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` with archbench's names, renamed to timm's (the inverse of ``from_timm``)."""
    rules = [(arch, timm) for timm, arch in _rules(model)]
    transforms, fused = _extras(model)
    scopes = _SCOPES[type(model).__name__](model) if type(model).__name__ in _SCOPES else []
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        split = _split(key, value, fused)
        if split is not None:
            out.update(split)
        else:
            name = _rename_scoped(key, rules, scopes, 1)
            out[name] = _transform(key, value, transforms, 1)
    return out
