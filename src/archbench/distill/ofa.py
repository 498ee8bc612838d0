"""One-for-all distillation between heterogeneous architectures: *One-for-All: Bridge the
Gap Between Heterogeneous Architectures in Knowledge Distillation* (OFA-KD, Hao et al.,
NeurIPS 2023).

Intermediate student features are projected into the logit space, where architecture
details no longer matter, by one small branch per chosen student stage, and every
branch, as well as the student's own logits, learns from the teacher's logits through
the OFA loss with its adaptive target enhancement. With ``p_t`` and ``p_s`` the softmax
of teacher and branch logits at temperature ``T`` and ``y`` the target class, the loss
of one sample is (the form of the official code, per sample, then batch mean)::

    ofa(eps) = -((1 + p_t[y])^eps - 1) * log p_s[y] - sum_{c != y} p_t[c]^eps * log p_s[c]

For ``eps = 1`` this is the cross-entropy against the teacher's distribution (plain KD
up to the teacher's entropy); ``eps > 1`` raises the target's weight the more the teacher
is confident in it and lowers the weight of the teacher's uncertain non-target mass.
The step's loss is::

    ce_weight * CE(z_s, y_soft) + logit_weight * ofa(z_s, eps[-1])
        + loss_weight * sum_i ofa(branch_i(f_i), eps[i])

Branches (sizes of the official code):

- a map (B, C, H, W) from a hierarchical model, or from an isotropic convolutional one:
  ``n - s`` separable-conv blocks (depthwise 3x3 stride 2 + pointwise + BN + ReLU, twice),
  each doubling the width and the last reaching ``max(d_s, d_t)`` (the pre-logit widths of
  student and teacher), or a 1x1 conv to that width at the last stage; then global
  average pooling and a linear layer to the classes;
- tokens (B, N, C) from an isotropic token model: ``floor(log2(side / 7))`` 2x2 patch
  merges (LayerNorm, linear, GELU between merges; none for grids under 14 a side) to the
  student's pre-logit width ``d_s``, then ``max(n - s, 1)`` transformer blocks (4 heads, no qkv
  bias), the class token (or the mean token when the model has none), and a linear layer.

``stages`` counts from 1. A hierarchical student has ``n = len(feature_info)`` stages;
an isotropic one (ViT, Mixer, ConvMixer...) has ``n = 4``, at blocks 2, 4, 10 and 12 of
12 as in the official ViT set-up (for depth ``D``: block ``round(D * k / 12)``). The
official defaults: every stage, ``eps = 1`` (1.5 for its ImageNet CNN students), ``T = 1``
and every weight 1. The target class is the argmax of the recipe's soft targets, as the
official code does with smoothed or mixed labels.

Where this differs from the official code: a branch's kind follows the shape
``forward_intermediates`` gives (hierarchical transformers give maps here, so they get
convolutional branches); a student whose class-token width differs from its pre-logit
width gets a linear map for its prefix tokens; odd grids are zero-padded before merging;
with several prefix tokens the first (the class token) feeds the classifier; and the
branch weights are drawn from the recipe's seed. Features and logits come from one
forward pass (:func:`features_and_logits`), as in the official code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers.attention import TransformerBlock
from ..train import register_task, soft_cross_entropy
from ..train.evaluate import normalized_batches
from ..train.tasks import classification_metrics
from .teacher import DistillationTask

__all__ = ["OFADistillation", "features_and_logits", "ofa_loss"]

# isotropic students: the official branches sit after blocks 2, 4, 10 and 12 of a 12-block ViT
_ISOTROPIC_BLOCKS_OF_12 = (2, 4, 10, 12)
_FINAL_GRID = 7  # the token branch merges patches down towards a 7 x 7 grid


def ofa_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    target: torch.Tensor,
    eps: float,
    temperature: float = 1.0,
) -> torch.Tensor:
    """The OFA loss: cross-entropy against the teacher's probabilities with the target
    class weighted ``(1 + p_t[y])^eps - 1`` and the others ``p_t[c]^eps``; batch mean."""
    t = float(temperature)
    log_p_s = F.log_softmax(student.float() / t, dim=-1)
    p_t = F.softmax(teacher.float() / t, dim=-1)
    mask = F.one_hot(target, p_t.shape[-1]).to(p_t.dtype)
    weight = (p_t + mask).pow(float(eps)) - mask
    return -(weight * log_p_s).sum(-1).mean()


def features_and_logits(
    model: nn.Module, x: torch.Tensor, positions: Sequence[int]
) -> tuple[list[torch.Tensor], Any]:
    """``model(x)`` and, from the same pass, what ``model.forward_intermediates(x,
    positions)`` returns (hooks on the same ``feature_info`` modules, same conversion).

    One pass instead of two keeps BatchNorm statistics and drop-path draws as a plain
    training step has them.
    """
    captured: dict[int, Any] = {}
    handles = [
        model.get_submodule(model.feature_info[p].module).register_forward_hook(
            lambda _m, _i, out, p=p: captured.setdefault(p, out)
        )
        for p in positions
    ]
    try:
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    feats = []
    for p in positions:
        if p not in captured:
            raise RuntimeError(
                f"{type(model).__name__}: feature_info module {model.feature_info[p].module!r} "
                "did not run in the forward pass"
            )
        out = model._feature_tensor(captured[p], model.feature_info[p])
        if out.ndim == 3 and not model.isotropic:
            out = model.tokens_to_map(out)
        feats.append(out)
    return feats, logits


class SepConv(nn.Module):
    """Depthwise 3x3 (stride 2) + pointwise + BN + ReLU, then depthwise 3x3 + pointwise to
    ``out_chs`` + BN + ReLU: the OFA convolutional branch's down-sampling block."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_chs, in_chs, 3, 2, 1, groups=in_chs, bias=False),
            nn.Conv2d(in_chs, in_chs, 1, bias=False),
            nn.BatchNorm2d(in_chs),
            nn.ReLU(),
            nn.Conv2d(in_chs, in_chs, 3, 1, 1, groups=in_chs, bias=False),
            nn.Conv2d(in_chs, out_chs, 1, bias=False),
            nn.BatchNorm2d(out_chs),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ConvBranch(nn.Module):
    """A (B, C, H, W) stage map to class logits: ``downsamples`` SepConv blocks (or a 1x1
    conv when there are none), global average pooling, linear."""

    def __init__(self, in_chs: int, width: int, downsamples: int, num_classes: int) -> None:
        super().__init__()
        if downsamples == 0:
            blocks: list[nn.Module] = [nn.Conv2d(in_chs, width, 1)]
        else:
            blocks, chs = [], in_chs
            for i in range(downsamples):
                out = width if i == downsamples - 1 else chs * 2
                blocks.append(SepConv(chs, out))
                chs *= 2
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(x).mean((2, 3)))


class PatchMerge(nn.Module):
    """2x2 neighbouring tokens of a (B, C, H, W) grid concatenated, LayerNorm, linear to
    ``out_dim`` (no bias), activation; odd sides are zero-padded first."""

    def __init__(self, dim: int, out_dim: int, act: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)
        self.act = nn.GELU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % 2 or w % 2:
            x = F.pad(x, (0, w % 2, 0, h % 2))
        parts = (x[..., 0::2, 0::2], x[..., 1::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 1::2])
        x = torch.cat(parts, 1).permute(0, 2, 3, 1)
        return self.act(self.reduction(self.norm(x))).permute(0, 3, 1, 2)


class TokenBranch(nn.Module):
    """Tokens to class logits: patch merging, transformer blocks, class (or mean) token,
    linear. ``forward(prefix, grid)`` takes the prefix tokens (B, P, C) and the patch
    tokens folded to a (B, C, H, W) grid."""

    def __init__(
        self,
        embed_dim: int,
        width: int,
        grid: tuple[int, int],
        num_prefix: int,
        num_blocks: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        merges = max(int(math.log2(min(grid) / _FINAL_GRID)), 0)
        self.merges = nn.Sequential(
            *(
                PatchMerge(embed_dim if i == 0 else width, width, act=i != merges - 1)
                for i in range(merges)
            )
        )
        same = embed_dim == width
        self.patch_proj = nn.Identity() if merges or same else nn.Linear(embed_dim, width)
        self.prefix_proj = nn.Identity() if same else nn.Linear(embed_dim, width)
        heads = 4 if width % 4 == 0 else 1
        self.blocks = nn.Sequential(
            *(
                TransformerBlock(width, heads, qkv_bias=False, norm_eps=1e-5)
                for _ in range(num_blocks)
            )
        )
        self.num_prefix = num_prefix
        self.fc = nn.Linear(width, num_classes)

    def forward(self, prefix: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        patches = self.patch_proj(self.merges(grid).flatten(2).transpose(1, 2))
        x = self.blocks(torch.cat([self.prefix_proj(prefix), patches], 1))
        return self.fc(x[:, 0] if self.num_prefix else x.mean(1))


def _init_branch(module: nn.Module) -> None:
    """The official initialisation: Kaiming-normal convs (fan-out), unit BN, linears
    truncated-normal with std 0.02 and zero bias."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _probe_batch(data: Any, device: torch.device) -> torch.Tensor:
    """Two validation images, normalized as a batch is."""
    return next(normalized_batches(data.val, 2))[0].to(device)


@register_task("ofa")
class OFADistillation(DistillationTask):
    """OFA-KD: logit-space branches on student stages, each trained with the OFA loss."""

    def __init__(
        self,
        teacher: str,
        stages: list[int] | None = None,
        eps: float | list[float] = 1.0,
        temperature: float = 1.0,
        loss_weight: float = 1.0,
        logit_weight: float = 1.0,
        ce_weight: float = 1.0,
        cache: str = "",
    ) -> None:
        super().__init__(teacher, cache)
        if stages is not None:
            if isinstance(stages, (int, str)) or not all(
                isinstance(s, int) and not isinstance(s, bool) for s in stages
            ):
                raise ValueError(f"stages must be a list of stage numbers (from 1), got {stages!r}")
            if not stages or len(set(stages)) != len(stages):
                raise ValueError(f"stages must name distinct stages (from 1), got {stages!r}")
        eps_list = [eps] if isinstance(eps, (int, float)) else list(eps)
        if not eps_list or any(
            isinstance(e, bool) or not isinstance(e, (int, float)) or e <= 0 for e in eps_list
        ):
            raise ValueError(f"eps must be a positive number or a list of them, got {eps!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        for name, w in (
            ("loss_weight", loss_weight),
            ("logit_weight", logit_weight),
            ("ce_weight", ce_weight),
        ):
            if w < 0:
                raise ValueError(f"{name} must be >= 0, got {w}")
        self.stages = None if stages is None else [int(s) for s in stages]
        self.eps_arg = [float(e) for e in eps_list]
        self.temperature = float(temperature)
        self.loss_weight, self.logit_weight, self.ce_weight = (
            float(loss_weight),
            float(logit_weight),
            float(ce_weight),
        )

    # ----- set-up ------------------------------------------------------------------
    def layout(self, model: nn.Module) -> tuple[list[int], list[int], int, list[float]]:
        """The chosen stages, their ``feature_info`` positions, the student's stage count
        and one eps per branch plus one for the logits; fails on stages it lacks."""
        name = type(model).__name__
        n_info = len(model.feature_info)
        n_stages = 4 if model.isotropic else n_info
        stages = self.stages or list(range(1, n_stages + 1))
        wrong = [s for s in stages if not 1 <= s <= n_stages]
        if wrong:
            kind = "isotropic: OFA places 4 along its blocks" if model.isotropic else "stages"
            raise ValueError(
                f"OFA: the student {name} has {n_stages} stages ({kind}); stages {wrong} do not "
                f"exist: give stages within 1..{n_stages}, e.g. stages={list(range(1, n_stages + 1))}"
            )
        eps = self.eps_arg * (len(stages) + 1) if len(self.eps_arg) == 1 else self.eps_arg
        if len(eps) != len(stages) + 1:
            raise ValueError(
                f"OFA: eps has {len(self.eps_arg)} values; give one, or one per stage "
                f"({len(stages)}) plus one for the final logits ({len(stages) + 1} in all)"
            )
        if model.isotropic:
            blocks = [max(int(n_info * k / 12 + 0.5), 1) - 1 for k in _ISOTROPIC_BLOCKS_OF_12]
            positions = [blocks[s - 1] for s in stages]
        else:
            positions = [s - 1 for s in stages]
        return stages, positions, n_stages, eps

    def check_student(self, model: nn.Module) -> None:
        self.layout(model)

    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        super().setup(model, data, recipe)
        name = type(model).__name__
        stages, positions, n_stages, eps = self.layout(model)
        device = next(model.parameters()).device
        x = _probe_batch(data, device)
        was_training = model.training
        model.eval()
        teacher = self.frozen["teacher"].to(device)
        try:
            with torch.no_grad():
                feats, _ = features_and_logits(model, x, sorted(set(positions)))
                feats = dict(zip(sorted(set(positions)), feats))
                d_s = model.forward_head(model.forward_features(x), pre_logits=True).shape[-1]
                t_in = self.frozen["input"].to(device)(x)
                t_pre = teacher.forward_head(teacher.forward_features(t_in), pre_logits=True)
                d_t = t_pre.shape[-1]
        finally:
            model.train(was_training)
        width = max(int(d_s), int(d_t))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(recipe.seed))
            for stage, pos in zip(stages, positions):
                f = feats[pos]
                if f.ndim == 4:
                    branch: nn.Module = ConvBranch(
                        f.shape[1], width, n_stages - stage, data.num_classes
                    )
                elif f.ndim == 3:
                    grid = model.tokens_to_map(f).shape[-2:]
                    branch = TokenBranch(
                        f.shape[-1],
                        int(d_s),
                        (int(grid[0]), int(grid[1])),
                        int(model.num_prefix_tokens),
                        max(n_stages - stage, 1),
                        data.num_classes,
                    )
                else:
                    raise ValueError(
                        f"OFA: {name}'s feature at stage {stage} has shape {tuple(f.shape)}; "
                        "branches take (B, C, H, W) maps or (B, N, C) tokens"
                    )
                _init_branch(branch)
                self.trainable[f"stage{stage}"] = branch.to(device)
        self.stage_list, self.positions, self.eps = stages, positions, eps

    # ----- steps -------------------------------------------------------------------
    def losses(self, batch: Any, state: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        model = state.model
        feats, logits = features_and_logits(model, batch.images, self.positions)
        if isinstance(logits, (tuple, list)):
            raise ValueError(
                f"OFA: {type(model).__name__} returns {len(logits)} heads' logits in training; "
                "OFA trains one head (turn the distillation head off, or use task deit)"
            )
        teacher = self.teacher_logits(batch, state)
        target = batch.targets.argmax(-1)
        branch = logits.new_zeros(())
        for stage, feat, eps in zip(self.stage_list, feats, self.eps):
            head = self.trainable[f"stage{stage}"]
            if feat.ndim == 3:
                z = head(feat[:, : model.num_prefix_tokens], model.tokens_to_map(feat))
            else:
                z = head(feat)
            branch = branch + ofa_loss(z, teacher, target, eps, self.temperature)
        final = ofa_loss(logits, teacher, target, self.eps[-1], self.temperature)
        ce = soft_cross_entropy(logits, batch.targets)
        return {"ce": ce, "ofa_logits": final, "ofa_branches": branch}, logits

    def step(self, batch: Any, state: Any) -> dict[str, Any]:
        parts, logits = self.losses(batch, state)
        loss = (
            self.ce_weight * parts["ce"]
            + self.logit_weight * parts["ofa_logits"]
            + self.loss_weight * parts["ofa_branches"]
        )
        out: dict[str, Any] = {k: v.detach() for k, v in parts.items()}
        out["ofa"] = out["ofa_logits"] + out["ofa_branches"]
        out["loss"] = loss
        out["acc"] = (logits.detach().argmax(-1) == batch.labels).float().mean()
        return out

    def eval_step(self, batch: Any, state: Any) -> dict[str, float]:
        parts, logits = self.losses(batch, state)
        m = classification_metrics(logits, batch.labels)
        n = m.pop("n")
        metrics = {k: v / n for k, v in m.items()}
        metrics["ofa_logits"] = float(parts["ofa_logits"])
        metrics["ofa_branches"] = float(parts["ofa_branches"])
        metrics["ofa"] = metrics["ofa_logits"] + metrics["ofa_branches"]
        return metrics
