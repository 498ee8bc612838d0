"""Module-to-module distillation: *m2mKD: Module-to-Module Knowledge Distillation for
Modular Transformers* (Lo et al., 2024; official code kamanphoebe/m2mKD).

The teacher, a monolithic isotropic transformer, is split at block boundaries into M
teacher modules; the student, a modular model (archbench's mixture-of-experts
transformers: ``mlp_kan_pico``, ``widenet_pico``, or any isotropic model), is split into M
student modules the same way. Each pair i is placed in a shared, frozen *meta model*
that is split into M parts as well: the hybrid network runs the meta model's parts
before i, then the module, then the meta model's parts after i. The teacher hybrid
(meta with teacher module i) gives the targets; the student hybrid (meta with student
module i) is trained on

    loss_i = (1 - alpha) * CE(z_s, y) + alpha * tau^2 * sum KL(softmax(z_t / tau) || softmax(z_s / tau)) / (B * K)

with z the hybrids' logits over K classes, y the recipe's (soft) targets and the summed
KL divided by batch x classes, exactly as the official loss (``m2mKDLoss``, DeiT's legacy
normalization); ``kind="hard"`` replaces the second term by the cross-entropy with the
teacher hybrid's argmax. Defaults are the official V-MoE recipe's: soft, alpha = 1/2,
tau = 1, M = 4. Module 0 holds the student's input embedding and starts from the image;
the last module holds its final norm and head and gives the logits itself (in the
official code likewise). Where the meta model's width differs from the student's, the
module is stitched in as the official code does: LayerNorm + Linear into the module
(every module but the first) and LayerNorm + Linear out of it (every module but the
last), trained with the module and dropped afterwards (the official default).

What archbench covers, and what it does not:

- Covered: the m2mKD phase. One run trains every pair at once (``module=-1``; the loss is
  the sum of the pairs' losses, and since a student module appears in its own hybrid
  only, each module gets exactly its pair's gradient, as in the official code's one run
  per pair, except that weight decay and gradient clipping see all pairs together), or
  one pair (``module=i``), as the official runs do. The trained modules sit in the
  student model itself, so its checkpoint is the assembled modular student.
- Covered by an ordinary run: the end-to-end phase. Load the m2mKD run's checkpoint into
  the student (``load_checkpoint``) and train it with ``fit`` (classification, or a
  distillation task); the stitch layers are not part of the student.
- Not covered: the preparation phase. The paper trains the teacher with Deep Incubation
  and pre-trains a small meta model with one block per module; archbench takes any
  trained isotropic teacher, and as meta model either a separately trained isotropic run
  (``meta``: its blocks are split into M parts; it must have the teacher's token shape
  and be trained on the teacher's data spec, classes, channels and image size, since it
  takes the teacher's input) or, by default, the teacher itself (then the teacher hybrid is the teacher,
  and its logits can be cached). NAC students and V-MoE's fastmoe experts are not
  provided; a student module is a contiguous group of the student's blocks (as in the
  official V-MoE recipe: 12 MoE layers in 4 modules of 3), not a single expert.

The hybrids are built without architecture-specific code: a forward hook on the
``feature_info`` module that ends the block before a module replaces its output with the
stitched input, and ``forward_intermediates`` stops the pass at the module's last block.
A model whose blocks are shared across depth (WideNet) trains its shared block from every
pair; only its per-layer parts are module-specific. The MoE load-balancing loss is not
added here (the official loss has none); the end-to-end classification adds it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..train import register_task, soft_cross_entropy
from .teacher import DistillationTask, load_teacher

__all__ = ["ModuleToModuleDistillation", "m2mkd_loss", "run_blocks", "split_blocks"]


def split_blocks(depth: int, num_modules: int) -> list[tuple[int, int]]:
    """``num_modules`` contiguous [start, end) block ranges covering ``depth`` blocks; sizes
    differ by at most one, the larger ones first."""
    if not 1 <= num_modules <= depth:
        raise ValueError(f"cannot split {depth} blocks into {num_modules} modules")
    base, extra = divmod(depth, num_modules)
    spans, start = [], 0
    for i in range(num_modules):
        end = start + base + (1 if i < extra else 0)
        spans.append((start, end))
        start = end
    return spans


def m2mkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float,
    tau: float,
    kind: str = "soft",
) -> dict[str, torch.Tensor]:
    """One pair's loss (``loss``) and its terms (``ce``, ``distill``), as ``m2mKDLoss``."""
    s = student_logits.float()
    ce = soft_cross_entropy(s, targets)
    if kind == "soft":
        log_p_s = F.log_softmax(s / tau, dim=-1)
        log_p_t = F.log_softmax(teacher_logits.float() / tau, dim=-1)
        kl = F.kl_div(log_p_s, log_p_t, reduction="sum", log_target=True)
        distill = kl * tau * tau / s.numel()
    else:
        distill = F.cross_entropy(s, teacher_logits.argmax(-1))
    return {"loss": (1 - alpha) * ce + alpha * distill, "ce": ce, "distill": distill}


def run_blocks(
    model: nn.Module,
    x: torch.Tensor,
    inject_after: int | None = None,
    inject: torch.Tensor | None = None,
    capture: int | None = None,
) -> torch.Tensor:
    """Run an isotropic model on images ``x`` with the output of block ``inject_after``
    replaced by ``inject``; return block ``capture``'s tokens (the pass stops there) or,
    with ``capture=None``, the logits."""
    handles = []
    if inject is not None:
        info = model.feature_info[inject_after]

        def replace(_module: nn.Module, _inputs: Any, output: Any) -> torch.Tensor:
            if not isinstance(output, torch.Tensor) or output.shape != inject.shape:
                got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
                raise ValueError(
                    f"{type(model).__name__}: block {inject_after} ({info.module}) outputs "
                    f"{got}, so it cannot take a module's {tuple(inject.shape)} tokens in its place"
                )
            return inject

        handles.append(model.get_submodule(info.module).register_forward_hook(replace))
    try:
        if capture is None:
            return model(x)
        return model.forward_intermediates(x, [capture])[0]
    finally:
        for handle in handles:
            handle.remove()


def _normalized(images: torch.Tensor, data: Any) -> torch.Tensor:
    """uint8 images normalized as training batches are."""
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    return (images.float().div(255.0) - mean) / torch.tensor(data.std).view(1, -1, 1, 1)


def _stitch(c_in: int, c_out: int, generator: torch.Generator) -> nn.Sequential:
    """LayerNorm + Linear, initialised as the official model is (truncated normal 0.02),
    from ``generator`` so that the start does not depend on the caller's random state."""
    fc = nn.Linear(c_in, c_out)
    with torch.no_grad():
        nn.init.trunc_normal_(fc.weight, std=0.02, generator=generator)
    nn.init.zeros_(fc.bias)
    return nn.Sequential(nn.LayerNorm(c_in), fc)


@register_task("m2mkd")
class ModuleToModuleDistillation(DistillationTask):
    """m2mKD: every student module learns, inside a frozen meta model, to act as its
    teacher module does."""

    monitor = ("val_distill", "min")

    def __init__(
        self,
        teacher: str,
        meta: str = "",
        num_modules: int = 4,
        module: int = -1,
        kind: str = "soft",
        alpha: float = 0.5,
        tau: float = 1.0,
        cache: str = "",
    ) -> None:
        super().__init__(teacher, cache)
        if kind not in ("soft", "hard"):
            raise ValueError(f"kind must be 'soft' or 'hard', got {kind!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        if num_modules < 2:
            raise ValueError(
                f"num_modules must be >= 2 (one module is plain KD), got {num_modules}"
            )
        if not -1 <= module < num_modules:
            raise ValueError(
                f"module must be -1 (every pair) or in [0, {num_modules - 1}], got {module}"
            )
        if meta and cache:
            raise ValueError(
                "with a separate meta model the targets are not the teacher's logits, so they "
                "cannot be cached; leave cache empty or meta empty"
            )
        self.meta_spec = str(meta)
        self.num_modules, self.module = int(num_modules), int(module)
        self.kind, self.alpha, self.tau = kind, float(alpha), float(tau)

    # ----- set-up ------------------------------------------------------------------
    @property
    def pairs(self) -> list[int]:
        return list(range(self.num_modules)) if self.module < 0 else [self.module]

    def _meta(self) -> nn.Module:
        return self.frozen["meta"] if self.meta_spec else self.frozen["teacher"]

    @staticmethod
    def _require_isotropic(model: nn.Module, role: str, name: str, fix: str) -> None:
        if not getattr(type(model), "isotropic", False):
            raise ValueError(
                f"m2mKD splits the {role} into modules at block boundaries of an isotropic "
                f"model (one feature_info entry per block, tokens throughout); {name} is "
                f"hierarchical; {fix}"
            )

    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        super().setup(model, data, recipe)
        teacher, t_name = self.frozen["teacher"], self.teacher_info["model"]
        fix = "use an isotropic {} (vit_*, deit_*, mlp_kan_*, widenet_*, ...)"
        self._require_isotropic(teacher, "teacher", t_name, fix.format("teacher"))
        self._require_isotropic(model, "student", type(model).__name__, fix.format("student"))
        if self.meta_spec:
            meta, m_info = load_teacher(self.meta_spec)
            self._require_isotropic(meta, "meta model", m_info["model"], fix.format("meta model"))
            t_data = self.teacher_info["data"]
            keys = ("spec", "num_classes", "in_chans", "img_size")
            differ = [k for k in keys if m_info["data"].get(k) != t_data.get(k)]
            if differ:
                raise ValueError(
                    f"the meta model {m_info['model']} ({self.meta_spec}) was trained on other "
                    f"data than the teacher ({', '.join(differ)} differ); it takes the "
                    "teacher's input, so train it on the teacher's data"
                )
            self.frozen["meta"] = meta
        meta = self._meta()
        named = {"teacher": teacher, "student": model, "meta model": meta}
        for role, m in named.items():
            if len(m.feature_info) < self.num_modules:
                raise ValueError(
                    f"the {role} has {len(m.feature_info)} blocks, fewer than num_modules="
                    f"{self.num_modules}; lower num_modules"
                )
        self.spans = {
            role: split_blocks(len(m.feature_info), self.num_modules) for role, m in named.items()
        }
        self._build_stitches(model, data, recipe)

    def _build_stitches(self, model: nn.Module, data: Any, recipe: Any) -> None:
        x = _normalized(data.val.images[:2], data)
        device = next(model.parameters()).device
        meta, teacher = self._meta(), self.frozen["teacher"]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                xt = self.teacher_input(x)  # teacher and meta stay on the CPU until fit moves them
                m_tok = meta.forward_intermediates(xt, [e - 1 for _, e in self.spans["meta model"]])
                s_tok = model.forward_intermediates(
                    x.to(device), [e - 1 for _, e in self.spans["student"]]
                )
                t_tok = teacher.forward_intermediates(xt, [e - 1 for _, e in self.spans["teacher"]])
        finally:
            model.train(was_training)
        names = {
            "teacher": (self.teacher_info["model"], t_tok),
            "meta model": (type(meta).__name__, m_tok),
            "student": (type(model).__name__, s_tok),
        }
        for role, (name, tokens) in names.items():
            if tokens[0].ndim != 3:
                raise ValueError(
                    f"m2mKD stitches token sequences (B x N x C) between modules, but the "
                    f"{role} {name}'s blocks give {tuple(tokens[0].shape)} maps; use a token "
                    f"model as the {role}"
                )
        if t_tok[0].shape[1:] != m_tok[0].shape[1:]:
            raise ValueError(
                f"the teacher's tokens (N, C) = {tuple(t_tok[0].shape[1:])} differ from the "
                f"meta model's {tuple(m_tok[0].shape[1:])}; the teacher's modules run inside "
                "the meta model, so give them the same width and token count"
            )
        n_m, c_m = m_tok[0].shape[1:]
        n_s, c_s = s_tok[0].shape[1:]
        if n_s != n_m:
            raise ValueError(
                f"the student {type(model).__name__} gives {n_s} tokens per image and the "
                f"meta model (the teacher unless meta is set) {n_m}; m2mKD stitches token "
                "sequences one to one, so give the student the teacher's image size, patch "
                "size and number of prefix (class) tokens"
            )
        stitches = nn.ModuleDict()
        gen = torch.Generator().manual_seed(int(recipe.seed))
        for i in self.pairs:
            if i > 0:
                stitches[f"pre{i}"] = _stitch(c_m, c_s, gen)
            if i < self.num_modules - 1:
                stitches[f"post{i}"] = _stitch(c_s, c_m, gen)
        self.trainable["stitch"] = stitches

    def on_fit_start(self, state: Any) -> None:
        super().on_fit_start(state)
        # one dry run of every hybrid (everything is on the model's device now): a model
        # whose blocks cannot be spliced fails here, before training
        model = state.model
        device = next(model.parameters()).device
        x = _normalized(state.data.val.images[:2], state.data).to(device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                xt = self.teacher_input(x)
                ends = [e - 1 for _, e in self.spans["meta model"]]
                states = self._meta().forward_intermediates(xt, ends)
                for i in self.pairs:
                    h_in = states[i - 1] if i > 0 else None
                    self._student_hybrid(model, x, xt, i, h_in, self.trainable["stitch"])
                    if self.meta_spec:
                        self._teacher_hybrid(xt, i, h_in)
        finally:
            model.train(was_training)

    # ----- the hybrids -------------------------------------------------------------
    def _meta_suffix(self, xt: torch.Tensor, i: int, tokens: torch.Tensor) -> torch.Tensor:
        """The meta model's parts after module i, run on ``tokens`` (its logits)."""
        end = self.spans["meta model"][i][1]
        return run_blocks(self._meta(), xt, inject_after=end - 1, inject=tokens)

    def _student_hybrid(
        self,
        model: nn.Module,
        x: torch.Tensor,
        xt: torch.Tensor,
        i: int,
        h_in: torch.Tensor | None,
        stitches: nn.ModuleDict,
    ) -> torch.Tensor:
        start, end = self.spans["student"][i]
        inject = stitches[f"pre{i}"](h_in) if i > 0 else None
        last = i == self.num_modules - 1
        out = run_blocks(model, x, start - 1 if i > 0 else None, inject, None if last else end - 1)
        if last:
            return out
        return self._meta_suffix(xt, i, stitches[f"post{i}"](out))

    @torch.no_grad()
    def _teacher_hybrid(self, xt: torch.Tensor, i: int, h_in: torch.Tensor | None) -> torch.Tensor:
        start, end = self.spans["teacher"][i]
        last = i == self.num_modules - 1
        out = run_blocks(
            self.frozen["teacher"],
            xt,
            start - 1 if i > 0 else None,
            h_in,
            None if last else end - 1,
        )
        return out if last else self._meta_suffix(xt, i, out)

    def _pair_terms(self, batch: Any, state: Any) -> list[dict[str, torch.Tensor]]:
        x = batch.images
        xt = self.teacher_input(x)
        ends = [e - 1 for _, e in self.spans["meta model"]]
        needed = [ends[i - 1] for i in self.pairs if i > 0]
        with torch.no_grad():
            states = (
                dict(zip(needed, self._meta().forward_intermediates(xt, needed))) if needed else {}
            )
            shared = None if self.meta_spec else self.teacher_logits(batch, state)
        stitches = self.trainable["stitch"]
        terms = []
        for i in self.pairs:
            h_in = states[ends[i - 1]] if i > 0 else None
            z_s = self._student_hybrid(state.model, x, xt, i, h_in, stitches)
            z_t = shared if shared is not None else self._teacher_hybrid(xt, i, h_in)
            terms.append(m2mkd_loss(z_s, z_t, batch.targets, self.alpha, self.tau, self.kind))
            terms[-1]["acc"] = (z_s.detach().argmax(-1) == batch.labels).float().mean()
        return terms

    # ----- steps -------------------------------------------------------------------
    def step(self, batch: Any, state: Any) -> dict[str, Any]:
        terms = self._pair_terms(batch, state)
        n = len(terms)
        return {
            "loss": sum(t["loss"] for t in terms),
            "ce": sum(t["ce"].detach() for t in terms) / n,
            "distill": sum(t["distill"].detach() for t in terms) / n,
            "hybrid_acc": sum(t["acc"] for t in terms) / n,
        }

    def eval_step(self, batch: Any, state: Any) -> dict[str, float]:
        metrics = super().eval_step(batch, state)  # the assembled student's own accuracy
        terms = self._pair_terms(batch, state)
        n = len(terms)
        metrics["distill"] = float(sum(t["distill"] for t in terms)) / n
        metrics["hybrid_ce"] = float(sum(t["ce"] for t in terms)) / n
        metrics["hybrid_top1"] = float(sum(t["acc"] for t in terms)) / n
        return metrics
