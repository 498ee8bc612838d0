"""SimCLR v2: Chen, Kornblith, Swersky, Norouzi & Hinton, *Big Self-Supervised Models are
Strong Semi-Supervised Learners* (NeurIPS 2020).

Three stages, three tasks:

- ``simclr_v2`` pretraining: two views of each image (random resized crop + flip, colour
  jitter, grayscale, optional blur), a 3-layer projection head (BatchNorm and ReLU between
  layers, hidden width = the encoder's width, 128-d output: the paper's "deeper projection
  head"), and the NT-Xent loss (normalized temperature-scaled cross-entropy; every other
  view in the batch is a negative). The memory buffer of MoCo negatives that the paper
  adds brings "~1%" there and is left out here.
- ``simclr_v2_finetune``: supervised fine-tuning of the pretrained encoder on a fraction of
  the labels (``label_fraction``; the paper uses 1% and 10%): a fixed, seeded, class-
  balanced subset of the training split is labelled and only its samples contribute to
  the loss. The encoder comes from the pretraining run (``init=RUN``); the model's own
  classifier is re-initialized. Deviation: the paper fine-tunes from the first layer of
  the projection head; archbench models have one classifier on the pooled features, so
  the classifier sits on the encoder output (the paper's "fine-tune from layer 0").
- ``simclr_v2_distill``: self-distillation on unlabeled data: the fine-tuned network is
  a frozen teacher and the student minimises
  ``-sum_y P_T(y|x; tau) log P_S(y|x; tau)`` on every training image (labels unused).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.base import split_indices
from ..train.tasks import Batch, ClassificationTask, register_task, soft_cross_entropy
from .augment import SimCLRAugment
from .base import ProjectionHead, SSLTask, encode, pooled_width

__all__ = ["SimCLRv2", "SimCLRv2Distill", "SimCLRv2Finetune", "load_encoder", "nt_xent"]


def nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.1,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """NT-Xent of two views' embeddings (B, D): for each of the 2B embeddings, the
    cross-entropy of picking its partner view among the other 2B - 1, on cosine
    similarity / ``temperature``. ``exclude`` (B, B) bool, True where image j must not be
    a negative of image i (G-SimCLR's same-pseudo-class pairs)."""
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(
            f"nt_xent needs two (B, D) embeddings, got {tuple(z1.shape)}, {tuple(z2.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = z @ z.T / temperature
    blocked = torch.eye(2 * b, dtype=torch.bool, device=z.device)
    if exclude is not None:
        if exclude.shape != (b, b):
            raise ValueError(f"exclude must be ({b}, {b}), got {tuple(exclude.shape)}")
        ex = exclude.to(z.device).bool().repeat(2, 2)
        partner = torch.arange(2 * b, device=z.device).roll(b)
        ex[torch.arange(2 * b, device=z.device), partner] = False  # positives stay
        blocked = blocked | ex
    sim = sim.masked_fill(blocked, float("-inf"))
    target = torch.arange(2 * b, device=z.device).roll(b)
    return F.cross_entropy(sim, target)


@register_task("simclr_v2")
class SimCLRv2(SSLTask):
    """SimCLR v2 pretraining: NT-Xent over two views with a 3-layer projection head."""

    def __init__(
        self,
        temperature: float = 0.1,
        proj_dim: int = 128,
        proj_layers: int = 3,
        proj_hidden: int = 0,
        crop_scale: float = 0.2,
        jitter: float = 0.5,
        blur: float = 0.0,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if proj_dim < 1 or proj_layers < 1 or proj_hidden < 0:
            raise ValueError("proj_dim and proj_layers must be >= 1 and proj_hidden >= 0")
        if not 0 < crop_scale <= 1:
            raise ValueError(f"crop_scale must be in (0, 1], got {crop_scale}")
        if not 0 <= jitter <= 1.25 or not 0 <= blur <= 1:
            raise ValueError("jitter must be in [0, 1.25] and blur (a probability) in [0, 1]")
        self.temperature = temperature
        self.proj_dim, self.proj_layers, self.proj_hidden = proj_dim, proj_layers, proj_hidden
        self.crop_scale, self.jitter, self.blur = crop_scale, jitter, blur
        self.augment: SimCLRAugment | None = None

    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        super().setup(model, data, recipe)
        width = pooled_width(model)
        self.trainable["projector"] = ProjectionHead(
            width, self.proj_hidden or width, self.proj_dim, self.proj_layers, last_bn=True
        )
        self.augment = SimCLRAugment(
            data.mean,
            data.std,
            data.img_size,
            (self.crop_scale, 1.0),
            self.jitter,
            blur_p=self.blur,
        )

    def views_of(self, batch: Batch, state: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.raw_images(batch)
        if not state.model.training:  # validation: deterministic views, same images
            v = self.normalize(x)
            return v, v.flip(-1)
        # global RNG: the loop reseeds it every epoch and restores it on resume
        return self.augment(x), self.augment(x)

    def embed(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self.trainable["projector"](encode(model, x))

    def exclude(self, batch: Batch) -> torch.Tensor | None:
        return None

    def step(self, batch: Batch, state: Any) -> dict[str, Any]:
        v1, v2 = self.views_of(batch, state)
        b = v1.shape[0]
        z = self.embed(state.model, torch.cat([v1, v2]))
        loss = nt_xent(z[:b], z[b:], self.temperature, self.exclude(batch))
        return {"loss": loss}


def load_encoder(model: nn.Module, run: str | Path, which: str = "best") -> dict[str, Any]:
    """Load a pretraining run's encoder weights into ``model`` (every weight except the
    classifier, which is re-initialized by the caller's build). Returns the run's info."""
    from ..distill.teacher import load_teacher

    encoder, info = load_teacher(run, which)
    sd = encoder.state_dict()
    own = model.state_dict()
    head_keys = {k for k in own if k.startswith("head.")}
    missing = [k for k in own if k not in sd and k not in head_keys]
    if missing:
        raise ValueError(
            f"the encoder of {run} ({info['model']}) does not fit this model: it lacks "
            f"{', '.join(missing[:3])}; fine-tune the same architecture that was pretrained"
        )
    shaped = {k: v for k, v in sd.items() if k in own and k not in head_keys}
    bad = [k for k, v in shaped.items() if v.shape != own[k].shape]
    if bad:
        raise ValueError(
            f"the encoder of {run} does not fit this model ({bad[0]}: "
            f"{tuple(shaped[bad[0]].shape)} vs {tuple(own[bad[0]].shape)}); build the same "
            "variant with the same arguments"
        )
    model.load_state_dict(shaped, strict=False)
    return info


@register_task("simclr_v2_finetune")
class SimCLRv2Finetune(ClassificationTask):
    """SimCLR v2's fine-tuning on a fraction of the labels, from a pretrained encoder."""

    def __init__(self, init: str = "", label_fraction: float = 0.1, label_seed: int = 0) -> None:
        super().__init__()
        if not 0 < label_fraction <= 1:
            raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction}")
        self.init, self.label_fraction, self.label_seed = init, label_fraction, label_seed
        self.labelled = torch.zeros(0, dtype=torch.bool)

    def check(self, model: nn.Module, data: Any) -> None:
        super().check(model, data)
        if self.init and not Path(self.init).exists():
            raise FileNotFoundError(
                f"init={self.init!r} does not exist; give the folder of a simclr_v2 "
                "pretraining run (archbench pretrain MODEL --method simclr_v2 --out DIR)"
            )

    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        if self.init:
            load_encoder(model, self.init)
        labels = data.train.labels
        if self.label_fraction < 1:
            rest, chosen = split_indices(labels, [self.label_fraction], self.label_seed)
        else:
            chosen = torch.arange(len(labels))
        mask = torch.zeros(len(labels), dtype=torch.bool)
        mask[chosen] = True
        if not mask.any():
            raise ValueError(
                f"label_fraction={self.label_fraction} labels none of the {len(labels)} training "
                "images; raise it so that every class keeps at least one label"
            )
        self.labelled = mask

    def step(self, batch: Batch, state: Any) -> dict[str, Any]:
        keep = self.labelled.to(batch.index.device)[batch.index]
        logits = state.model(batch.images)
        if not keep.any():  # no labelled sample in this batch: a zero loss keeps the graph
            return {"loss": logits.sum() * 0.0, "labelled": 0.0}
        loss = soft_cross_entropy(logits[keep], batch.targets[keep])
        acc = (logits.detach()[keep].argmax(-1) == batch.labels[keep]).float().mean()
        return {"loss": loss, "acc": acc, "labelled": keep.float().mean()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**super().state_dict(), "labelled": self.labelled.to(torch.uint8)}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(sd)
        if "labelled" in sd:
            self.labelled = sd["labelled"].bool().cpu()


@register_task("simclr_v2_distill")
class SimCLRv2Distill(SSLTask):
    """SimCLR v2's distillation: a student learns the fine-tuned teacher's softened
    predictions on unlabeled images. The best checkpoint is the one that agrees most with
    the teacher on validation images (labels stay hidden)."""

    monitor = ("val_agree", "max")

    def __init__(self, teacher: str = "", temperature: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.teacher, self.temperature = teacher, temperature

    def check(self, model: nn.Module, data: Any) -> None:
        from ..train.evaluate import check_model_data

        check_model_data(model, data, logits=True)
        if not self.teacher:
            raise ValueError(
                "simclr_v2_distill needs teacher=RUN, a simclr_v2_finetune run folder "
                "(--method-arg teacher=DIR)"
            )
        if not Path(self.teacher).exists():
            raise FileNotFoundError(f"teacher {self.teacher!r} does not exist; give a run folder")

    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        from ..distill.teacher import load_teacher

        super().setup(model, data, recipe)
        teacher, _ = load_teacher(self.teacher)
        if getattr(teacher, "num_classes", None) != getattr(model, "num_classes", None):
            raise ValueError("the teacher and the student must predict the same classes")
        self.frozen["teacher"] = teacher

    def step(self, batch: Batch, state: Any) -> dict[str, Any]:
        self.raw_images(batch)  # refuses labels
        with torch.no_grad():
            t = self.frozen["teacher"](batch.images).float()
        s = state.model(batch.images).float()
        tau = self.temperature
        loss = soft_cross_entropy(s / tau, F.softmax(t / tau, dim=-1))
        agree = (s.detach().argmax(-1) == t.argmax(-1)).float().mean()
        return {"loss": loss, "agree": agree}

    def eval_step(self, batch: Batch, state: Any) -> dict[str, float]:
        out = self.step(batch, state)
        return {"loss": float(out["loss"]), "agree": float(out["agree"])}
