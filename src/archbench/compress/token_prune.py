"""Token pruning inside plain ViT blocks: EViT's token reorganization and SiT's token slimming.

*Not All Patches are What You Need: Expediting Vision Transformers via Token
Reorganizations* (EViT, Liang et al., ICLR 2022). In a chosen block, between the
attention and the MLP, the image tokens are ranked by the class token's attention to them
(averaged over heads); the ``ceil(keep_rate * N)`` most attended are kept (in the order of
their attention, as the official release's sorted top-k) and the others are fused into
one token, their sum weighted by that attention. The MLP and every later block then see
fewer tokens. The official release prunes after blocks 4, 7 and 10 of a 12-block DeiT
(0-based 3, 6, 9) with keep rate 0.7; archbench places them at ``depth * k // 4``
(k = 1, 2, 3), which is the same for 12 blocks. The class token's attention is computed
explicitly in a pruning block (the fused kernel does not return it); a block that keeps
every token runs unchanged, so keep rate 1.0 is the original model bit for bit.

*Self-slimmed Vision Transformer* (SiT, Zong et al., ECCV 2022). The blocks form four
stages; after each of the first three, a Token Slimming Module (TSM) turns the N patch
tokens into ``int(N0 * keep_rate ** stage)`` by a learned soft aggregation:
``A = softmax_N(s * MLP(LN(x)))`` (MLP: C -> C/2 -> N', GELU; ``s`` a learned scale,
initially 1) and ``x' = A^T x``, so every new token is a convex combination of the old.
The official stage split for SiT-S (16 blocks) is [9, 3, 2, 2]; archbench scales those
boundaries to the model's depth. The prefix (class, distillation) tokens pass untouched.
A TSM is new and untrained, so SiT fine-tunes with its Feature Recalibration
Distillation (FRD, task ``sit_frd``): cross-entropy, plus ``lambda_logits`` times the KL
to the unpruned teacher's logits at temperature ``tau``, plus ``lambda_token`` times the
mean over blocks of the MSE between the teacher's patch tokens and the student's tokens
recovered to N by a reverse TSM (RTSM: LN, an MLP over the token axis with hidden
``4 N``, then a residual LN + MLP over channels), as in the official ``losses.py``
(defaults 2.0, 2.0, 1.0). Deviation: SiT's extra CNN-teacher term is left out.

Both apply to the registry's plain-ViT-style models: isotropic, with a class token, a
``blocks`` sequence of :class:`~archbench.layers.TransformerBlock` that ``forward_features``
runs as a whole and a head that reads the prefix tokens (``vit_*``, ``deit_*`` with and
without distillation token, ``t2t_vit_*``). :func:`token_prunable_models` lists them.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import TransformerBlock
from ..train import ClassificationTask, register_task, soft_cross_entropy
from ._common import check_fraction, run_fit
from .registry import CompressContext, CompressResult, register_compressor

__all__ = [
    "EViTBlock",
    "ReverseTokenSlimming",
    "SiTDistillation",
    "SlimmedBlock",
    "TokenSlimmingModule",
    "apply_evit",
    "apply_sit",
    "check_plain_vit",
    "evit_locations",
    "evit_reorganize",
    "sit_stage_ends",
    "token_prunable_models",
]

_SIT_S_STAGES = (9, 3, 2, 2)  # the official SiT-S split of 16 blocks


def check_plain_vit(model: nn.Module) -> nn.Sequential:
    """The model's ``blocks`` when token pruning can run inside them, else a ``ValueError``."""
    name = type(model).__name__
    blocks = getattr(model, "blocks", None)
    ok = (
        getattr(model, "isotropic", False)
        and isinstance(getattr(model, "cls_token", None), nn.Parameter)
        and getattr(model, "num_prefix_tokens", 0) >= 1
        and isinstance(blocks, nn.Sequential)
        and len(blocks) > 0
        and all(isinstance(b, (TransformerBlock, EViTBlock, SlimmedBlock)) for b in blocks)
    )
    if ok:
        try:
            src = inspect.getsource(type(model).forward_features)
        except (OSError, TypeError):
            src = ""
        ok = "self.blocks(" in src
    if not ok:
        raise ValueError(
            f"token pruning needs a plain ViT (class token, a blocks sequence of "
            f"TransformerBlock run as a whole); {name} is not one. Use a vit_*, deit_* or "
            "t2t_vit_* model (token_prunable_models() lists every one)"
        )
    return blocks


def token_prunable_models(scale: str | None = None) -> list[str]:
    """Registered transformer models (``kind="vit"``, optionally of one ``scale``) that token
    pruning accepts; each is built on ``meta``, so no memory is used."""
    from ..models import create_model, list_models

    names = []
    for n in list_models(kind="vit", scale=scale):
        try:
            with torch.device("meta"):
                m = create_model(n)
        except Exception:  # noqa: BLE001 (a model that cannot build on meta is not plain)
            continue
        blocks = getattr(m, "blocks", None)
        if not getattr(m, "isotropic", False) or not isinstance(blocks, nn.Sequential):
            continue
        try:
            check_plain_vit(m)
        except ValueError:
            continue
        names.append(n)
    return names


def _plain_blocks(blocks: nn.Sequential) -> list[TransformerBlock]:
    out = []
    for b in blocks:
        out.append(b.block if isinstance(b, (EViTBlock, SlimmedBlock)) else b)
    return out


def _check_keep_rate(keep_rate: Any) -> float:
    return check_fraction("keep_rate", keep_rate, high_open=False)


# ----- EViT -----------------------------------------------------------------------------
def evit_reorganize(
    x: torch.Tensor, cls_attn: torch.Tensor, keep: int, num_prefix: int, fuse: bool = True
) -> torch.Tensor:
    """Keep the ``keep`` image tokens the class token attends to most; fuse the rest.

    ``x``: (B, P + N, C) with P prefix tokens; ``cls_attn``: (B, N), the class token's
    attention to each image token (mean over heads). Returns (B, P + keep [+ 1], C).
    """
    b, n_all, c = x.shape
    n = n_all - num_prefix
    idx = cls_attn.topk(keep, dim=1, largest=True, sorted=True).indices
    image = x[:, num_prefix:]
    kept = image.gather(1, idx.unsqueeze(-1).expand(-1, -1, c))
    parts = [x[:, :num_prefix], kept]
    if fuse and keep < n:
        dropped = torch.ones(b, n, dtype=torch.bool, device=x.device)
        dropped.scatter_(1, idx, False)
        weights = (cls_attn * dropped).unsqueeze(-1)
        parts.append((image * weights).sum(dim=1, keepdim=True))
    return torch.cat(parts, dim=1)


class EViTBlock(nn.Module):
    """A transformer block that reorganizes tokens between its attention and its MLP."""

    def __init__(
        self, block: TransformerBlock, keep_rate: float, num_prefix: int, fuse: bool = True
    ) -> None:
        super().__init__()
        self.block = block
        self.keep_rate = _check_keep_rate(keep_rate)
        self.num_prefix = int(num_prefix)
        self.fuse = bool(fuse)

    def kept_tokens(self, num_image_tokens: int) -> int:
        return math.ceil(self.keep_rate * num_image_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blk, n_img = self.block, x.shape[1] - self.num_prefix
        keep = self.kept_tokens(n_img)
        if keep >= n_img:
            return blk(x)
        attn = blk.attn
        b, n, _ = x.shape
        q, k, v = attn.qkv_heads(blk.norm1(x))
        probs = ((q @ k.transpose(-2, -1)) * attn.head_dim**-0.5).softmax(dim=-1)
        mixed = F.dropout(probs, attn.attn_drop, self.training) @ v
        out = attn.proj_drop(attn.proj(mixed.transpose(1, 2).reshape(b, n, -1)))
        x = x + blk.drop_path1(blk.ls1(out))
        cls_attn = probs[:, :, 0, self.num_prefix :].mean(dim=1)
        x = evit_reorganize(x, cls_attn, keep, self.num_prefix, self.fuse)
        return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))


def evit_locations(depth: int) -> list[int]:
    """0-based blocks that prune: ``depth * k // 4`` for k = 1, 2, 3 (3, 6, 9 of 12)."""
    return sorted({depth * k // 4 for k in (1, 2, 3)} - {depth})


def apply_evit(
    model: nn.Module,
    keep_rate: float = 0.7,
    locations: Sequence[int] | None = None,
    fuse: bool = True,
) -> nn.Module:
    """Make the blocks at ``locations`` (0-based; default :func:`evit_locations`) EViT blocks.

    Works in place and returns ``model``. Keep rate 1.0 leaves every block as it was.
    """
    keep_rate = _check_keep_rate(keep_rate)
    blocks = check_plain_vit(model)
    plain = _plain_blocks(blocks)
    depth = len(plain)
    locs = evit_locations(depth) if locations is None else [int(i) for i in locations]
    bad = [i for i in locs if not 0 <= i < depth]
    if bad:
        raise ValueError(f"EViT locations {bad} are outside the model's blocks 0..{depth - 1}")
    for i, blk in enumerate(plain):
        if i in locs and keep_rate < 1.0:
            blocks[i] = EViTBlock(blk, keep_rate, model.num_prefix_tokens, fuse)
        else:
            blocks[i] = blk
    return model


# ----- SiT ------------------------------------------------------------------------------
class TokenSlimmingModule(nn.Module):
    """SiT's TSM: N tokens -> ``out_tokens`` convex combinations of them."""

    def __init__(self, dim: int, out_tokens: int, hidden_ratio: float = 0.5) -> None:
        super().__init__()
        hidden = max(1, int(dim * hidden_ratio))
        self.weight = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out_tokens)
        )
        self.scale = nn.Parameter(torch.ones(1, 1, 1))
        self.out_tokens = out_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = (self.weight(x) * self.scale).softmax(dim=1)  # (B, N, N'), each column sums to 1
        return a.transpose(1, 2) @ x


class SlimmedBlock(nn.Module):
    """A transformer block followed by a TSM on its patch tokens (prefix tokens untouched)."""

    def __init__(self, block: TransformerBlock, tsm: TokenSlimmingModule, num_prefix: int) -> None:
        super().__init__()
        self.block, self.tsm, self.num_prefix = block, tsm, int(num_prefix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(x)
        p = self.num_prefix
        return torch.cat([x[:, :p], self.tsm(x[:, p:])], dim=1)


def sit_stage_ends(depth: int, stage_blocks: Sequence[int] | None = None) -> list[int]:
    """0-based blocks after which a TSM slims: the ends of the first three stages.

    Default: SiT-S's [9, 3, 2, 2] boundaries scaled to ``depth`` (7, 9, 10 of 12 -> 6, 8, 9).
    """
    if stage_blocks is not None:
        sb = [int(s) for s in stage_blocks]
        if any(s < 1 for s in sb) or sum(sb) != depth:
            raise ValueError(
                f"stage_blocks {list(stage_blocks)} must be positive and sum to the depth {depth}"
            )
        return [sum(sb[: i + 1]) - 1 for i in range(len(sb) - 1)]
    total = sum(_SIT_S_STAGES)
    ends, cum = [], 0
    for s in _SIT_S_STAGES[:-1]:
        cum += s
        ends.append(round(depth * cum / total) - 1)
    ends = sorted({min(max(e, 0), depth - 2) for e in ends}) if depth > 1 else []
    return ends


def apply_sit(
    model: nn.Module, keep_rate: float = 0.5, stage_blocks: Sequence[int] | None = None
) -> nn.Module:
    """Insert SiT's TSMs after the stage ends (in place; returns ``model``).

    Stage ``s`` keeps ``int(N * keep_rate ** s)`` patch tokens; where that is all of them
    (keep rate 1.0) no module is added, so the model stays exactly the original.
    """
    keep_rate = _check_keep_rate(keep_rate)
    blocks = check_plain_vit(model)
    plain = _plain_blocks(blocks)
    n0 = _num_patch_tokens(model)
    ends = sit_stage_ends(len(plain), stage_blocks)
    dim = plain[0].norm1.normalized_shape[0]
    current = n0
    for i, blk in enumerate(plain):
        blocks[i] = blk
        if i in ends:
            target = max(1, int(n0 * keep_rate ** (ends.index(i) + 1)))
            if target < current:
                tsm = TokenSlimmingModule(dim, target).to(blk.norm1.weight.device)
                blocks[i] = SlimmedBlock(blk, tsm, model.num_prefix_tokens)
                current = target
    return model


def _num_patch_tokens(model: nn.Module) -> int:
    pe = getattr(model, "pos_embed", None)
    if isinstance(pe, torch.Tensor) and pe.ndim == 3:
        return pe.shape[1] - model.num_prefix_tokens
    raise ValueError(f"{type(model).__name__} has no pos_embed to count its patch tokens")


def block_token_counts(model: nn.Module, x: torch.Tensor) -> list[int]:
    """The number of tokens each block outputs for input ``x`` (hooks, one forward pass)."""
    blocks = check_plain_vit(model)
    counts: list[int] = []
    hooks = [b.register_forward_hook(lambda m, i, o: counts.append(o.shape[1])) for b in blocks]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return counts


class ReverseTokenSlimming(nn.Module):
    """SiT's RTSM: N' tokens back to N (an MLP over tokens, then a residual channel MLP)."""

    def __init__(self, dim: int, in_tokens: int, out_tokens: int, ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        hidden = int(out_tokens * ratio)
        self.token_mlp = nn.Sequential(
            nn.Linear(in_tokens, hidden), nn.GELU(), nn.Linear(hidden, out_tokens)
        )
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mlp = nn.Sequential(
            nn.Linear(dim, int(dim * ratio)), nn.GELU(), nn.Linear(int(dim * ratio), dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


def _block_outputs(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and every block's output tokens."""
    feats: list[torch.Tensor] = []
    hooks = [
        b.register_forward_hook(lambda m, i, o: feats.append(o)) for b in check_plain_vit(model)
    ]
    try:
        logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    return logits, feats


@register_task("sit_frd")
class SiTDistillation(ClassificationTask):
    """SiT's Feature Recalibration Distillation from the unpruned model.

    The teacher is given in process (``task.teacher_model = module``, as the ``sit``
    compressor does) or as a run folder (``teacher``).
    """

    name = "sit_frd"

    def __init__(
        self,
        teacher: str = "",
        lambda_token: float = 2.0,
        lambda_logits: float = 2.0,
        tau: float = 1.0,
    ) -> None:
        super().__init__()
        if lambda_token < 0 or lambda_logits < 0:
            raise ValueError("lambda_token and lambda_logits must be >= 0")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.teacher_spec = str(teacher)
        self.lambda_token, self.lambda_logits, self.tau = (
            float(lambda_token),
            float(lambda_logits),
            float(tau),
        )
        self.teacher_model: nn.Module | None = None
        self.args = {
            "teacher": self.teacher_spec,
            "lambda_token": self.lambda_token,
            "lambda_logits": self.lambda_logits,
            "tau": self.tau,
        }

    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        teacher = self.teacher_model
        if teacher is None:
            if not self.teacher_spec:
                raise ValueError("sit_frd needs a teacher: a run folder (teacher=DIR)")
            from ..distill.teacher import load_teacher

            teacher, _ = load_teacher(self.teacher_spec)
        check_plain_vit(teacher)
        self.frozen["teacher"] = teacher
        x = torch.zeros(1, *data.train.images.shape[1:]) if hasattr(data, "train") else None
        if x is None:
            raise ValueError("sit_frd needs a DataBundle")
        dev = next(model.parameters()).device
        with torch.no_grad():
            _, s_feats = _block_outputs(model.eval(), x.float().to(dev))
            _, t_feats = _block_outputs(teacher.eval(), x.float().to(dev))
        model.train()
        self.prefix = model.num_prefix_tokens
        dim = s_feats[0].shape[-1]
        self.trainable["rtsm"] = nn.ModuleList(
            [
                ReverseTokenSlimming(dim, s.shape[1] - self.prefix, t.shape[1] - self.prefix)
                if s.shape[1] != t.shape[1]
                else nn.Identity()
                for s, t in zip(s_feats, t_feats, strict=True)
            ]
        )

    def step(self, batch: Any, state: Any) -> dict[str, Any]:
        from ..distill.logit import kd_loss

        logits, s_feats = _block_outputs(state.model, batch.images)
        with torch.no_grad():
            t_logits, t_feats = _block_outputs(self.frozen["teacher"], batch.images)
        ce = soft_cross_entropy(logits, batch.targets)
        p = self.prefix
        token = sum(
            F.mse_loss(r(s[:, p:]), t[:, p:])
            for r, s, t in zip(self.trainable["rtsm"], s_feats, t_feats, strict=True)
        ) / len(s_feats)
        kd = kd_loss(logits, t_logits, self.tau)
        loss = ce + self.lambda_token * token + self.lambda_logits * kd
        acc = (logits.detach().argmax(-1) == batch.labels).float().mean()
        return {
            "loss": loss,
            "ce": ce.detach(),
            "token": token.detach(),
            "kd": kd.detach(),
            "acc": acc,
        }


# ----- compressors ----------------------------------------------------------------------
def _check_token_args(keep_rate: Any = 0.7, finetune_epochs: Any = 0, **kw: Any) -> None:
    _check_keep_rate(keep_rate)
    for key in ("locations", "stage_blocks"):
        if key in kw:
            _parse_ints(kw[key], key)
    if (
        isinstance(finetune_epochs, bool)
        or not isinstance(finetune_epochs, int)
        or finetune_epochs < 0
    ):
        raise ValueError(f"finetune_epochs must be an integer >= 0, got {finetune_epochs!r}")


def _replay_evit(model: nn.Module, info: dict[str, Any]) -> None:
    apply_evit(model, info["keep_rate"], info["locations"], info["fuse"])


def _replay_sit(model: nn.Module, info: dict[str, Any]) -> None:
    apply_sit(model, info["keep_rate"], info.get("stage_blocks"))


@register_compressor("evit", check=_check_token_args, replay=_replay_evit)
def evit(
    model: nn.Module,
    ctx: CompressContext,
    keep_rate: float = 0.7,
    locations: str = "",
    fuse: bool = True,
    finetune_epochs: int = 0,
) -> CompressResult:
    """EViT token reorganization; ``locations`` as "3,6,9" (default: depth*k//4).

    ``finetune_epochs`` > 0 fine-tunes with the recipe's classification task, as EViT
    trains with reorganization in place.
    """
    locs = _parse_ints(locations, "locations")
    check_plain_vit(model)
    apply_evit(model, keep_rate, locs, fuse)
    if finetune_epochs:
        task = ClassificationTask()
        run_fit(model, ctx, task, {}, "evit_finetune", epochs=finetune_epochs)
    depth = len(model.blocks)
    info = {
        "keep_rate": float(keep_rate),
        "locations": evit_locations(depth) if locs is None else locs,
        "fuse": bool(fuse),
        "token_counts": block_token_counts(model, ctx.example_input()),
    }
    return CompressResult(model, needs_finetune=not finetune_epochs, info=info)


@register_compressor("sit", check=_check_token_args, replay=_replay_sit)
def sit(
    model: nn.Module,
    ctx: CompressContext,
    keep_rate: float = 0.5,
    stage_blocks: str = "",
    finetune_epochs: int = 0,
) -> CompressResult:
    """SiT token slimming; ``stage_blocks`` as "9,3,2,2"; ``finetune_epochs`` > 0 runs FRD."""
    stages = _parse_ints(stage_blocks, "stage_blocks")
    check_plain_vit(model)
    teacher = copy.deepcopy(model).eval() if finetune_epochs else None
    apply_sit(model, keep_rate, stages)
    if finetune_epochs:
        task = SiTDistillation()
        task.teacher_model = teacher
        run_fit(model, ctx, task, {}, "sit_frd", epochs=finetune_epochs)
    info = {
        "keep_rate": float(keep_rate),
        "stage_blocks": stages,
        "stage_ends": sit_stage_ends(len(model.blocks), stages),
        "token_counts": block_token_counts(model, ctx.example_input()),
    }
    return CompressResult(model, needs_finetune=not finetune_epochs, info=info)


def _parse_ints(text: Any, name: str) -> list[int] | None:
    if text in ("", None):
        return None
    if isinstance(text, (list, tuple)):
        items = list(text)
    else:
        items = [t for t in str(text).replace(" ", "").split(",") if t]
    try:
        return [int(t) for t in items]
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be comma-separated integers such as '3,6,9', got {text!r}"
        ) from None
