"""OBoW: *Online Bag-of-Visual-Words Generation for Self-Supervised Learning* (Gidaris,
Bursuc, Puy, Komodakis, Cord and Pérez, CVPR 2021).

A momentum teacher turns the image into bag-of-visual-words targets; the student
predicts them from perturbed crops of the same image.

- Teacher: an exponential moving average of the student (``momentum`` 0.99 rising to 1
  on a cosine over the run, as the official ``alpha_cosine``). Its feature maps at the
  last ``levels`` entries of ``feature_info`` (ResNet's conv4 and conv5) give the
  targets, one per level.
- Vocabulary: per level, a queue of ``num_words`` local teacher features. Each training
  batch pushes one feature per image: the 3x3 local average of the map at a random
  position. The words start as ``relu(N(0, 1))`` vectors.
- Target: the map's border is dropped; each position's squared distances ``d_k`` to the
  words give soft codes ``softmax_k(-d_k * inv_delta / mu)``, ``mu`` an exponential
  moving average (decay 0.99, start 0.5) of the batch's mean distance to the nearest
  word; the codes are max-pooled over positions and L1-normalized.
- Student prediction: a weight generator per level (L2 norm, linear to twice the
  feature width without bias, BatchNorm, ReLU, linear to the feature width, L2 norm)
  maps every word to a classifier weight; the logits are ``kappa * f @ W^T`` with ``f``
  the student's pooled feature. Loss: ``KL(target || softmax(logits))`` averaged over the
  batch, the levels and the views (``crops`` full-size crops of 8-60% of the image and
  ``patches`` small patches from a 3x3 grid).

Official defaults kept: ``inv_delta = 15``, ``kappa = 8``, max pooling, local-average
vocabulary updates, two levels, 2 crops and 5 patches with colour jitter and flips. The
teacher sees the whole image, flipped at random. Where archbench differs: the vocabulary
holds 1024 words (8192 in the paper; the embedded datasets are small), the queue wraps
around when a batch does not divide it, the map border is kept when the map is smaller
than 3x3 (and the local average skipped), the crops have the model's input size (the
paper's are 160 px against the teacher's 224) and the patches keep the paper's ratio
to the image (96 of 256 px), resized to the model's input size when the model cannot
take them as they are. The official on-line linear classifier on teacher features
(monitoring only) is left out.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.transforms import random_resized_crop
from ..train import register_task
from ._pretext import ema_update, normalize_images, pooled_features, raw_to_float, simple_view
from .base import SSLTask

__all__ = ["BowPredictor", "BowVocabulary", "OBoW", "bow_from_codes", "soft_codes"]


def feature_maps(model: nn.Module, x: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
    """NCHW maps of the ``feature_info`` entries ``indices`` (token outputs turned into maps)."""
    outs = model.forward_intermediates(x, indices)
    return [o if o.ndim == 4 else model.tokens_to_map(o) for o in outs]


def squared_distances(features: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W): squared distance of each position's feature (B, C, H, W) to each word (K, C)."""
    f2 = features.pow(2).sum(1, keepdim=True)
    w2 = words.pow(2).sum(1).view(1, -1, 1, 1)
    cross = torch.einsum("bchw,kc->bkhw", features, words)
    return (f2 + w2 - 2 * cross).clamp_min(0)


def soft_codes(dist: torch.Tensor, inv_delta: float) -> torch.Tensor:
    """Soft assignment of each position to the words: ``softmax_k(-inv_delta * d_k)``."""
    return F.softmax(-inv_delta * dist, dim=1)


def bow_from_codes(codes: torch.Tensor, pool: str = "max") -> torch.Tensor:
    """(B, K, H, W) codes -> (B, K) L1-normalized bag of words (max or average pooling)."""
    if pool == "max":
        bow = codes.flatten(2).max(dim=2).values
    elif pool == "avg":
        bow = codes.flatten(2).mean(dim=2)
    else:
        raise ValueError(f"bow pooling must be 'max' or 'avg', got {pool!r}")
    return F.normalize(bow, p=1, dim=1)


class BowVocabulary(nn.Module):
    """A queue of visual words for one feature level, and the BoW targets it gives."""

    def __init__(self, num_words: int, channels: int, inv_delta: float, decay: float = 0.99):
        super().__init__()
        self.num_words, self.inv_delta, self.decay = num_words, inv_delta, decay
        self.register_buffer("words", torch.randn(num_words, channels).clamp(min=0))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("min_dist_mean", torch.full((), 0.5))

    @torch.no_grad()
    def push(self, features: torch.Tensor) -> None:
        """Add one local feature per image (3x3 local average at a random position)."""
        if min(features.shape[-2:]) >= 3:
            features = F.avg_pool2d(features, kernel_size=3, stride=1)
        b, c = features.shape[:2]
        flat = features.flatten(2)
        pos = torch.randint(0, flat.shape[2], (b,)).to(features.device)
        picked = flat[torch.arange(b, device=features.device), :, pos]
        rows = (int(self.ptr) + torch.arange(b, device=features.device)) % self.num_words
        self.words[rows] = picked[-self.num_words :] if b > self.num_words else picked
        self.ptr.fill_((int(self.ptr) + b) % self.num_words)

    @torch.no_grad()
    def forward(self, features: torch.Tensor, update: bool) -> torch.Tensor:
        """(B, C, H, W) teacher map -> (B, K) BoW targets; ``update`` runs the training
        bookkeeping (distance average, queue) after the targets are computed."""
        if min(features.shape[-2:]) >= 3:
            features = features[:, :, 1:-1, 1:-1]
        features = features.float()
        dist = squared_distances(features, self.words)
        if update:
            mu = dist.min(dim=1).values.mean()
            self.min_dist_mean.mul_(self.decay).add_(mu, alpha=1 - self.decay)
        codes = soft_codes(dist, self.inv_delta / float(self.min_dist_mean))
        bow = bow_from_codes(codes, "max")
        if update:
            self.push(features)
        return bow


class BowPredictor(nn.Module):
    """OBoW's dynamic prediction head: one weight generator per level turns the words
    into classifier weights; logits are ``kappa * f @ W^T``."""

    def __init__(self, word_channels: list[int], feature_dim: int, kappa: float) -> None:
        super().__init__()
        self.kappa = kappa
        self.generators = nn.ModuleList(
            nn.Sequential(
                nn.Linear(c, 2 * feature_dim, bias=False),
                nn.BatchNorm1d(2 * feature_dim),
                nn.ReLU(inplace=True),
                nn.Linear(2 * feature_dim, feature_dim),
            )
            for c in word_channels
        )

    def forward(
        self, features: torch.Tensor, vocabularies: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        out = []
        for gen, words in zip(self.generators, vocabularies, strict=True):
            weight = F.normalize(gen(F.normalize(words, dim=1)), dim=1)
            out.append(self.kappa * features @ weight.T)
        return out


def bow_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``KL(target || softmax(logits))`` summed over words, averaged over the batch."""
    return F.kl_div(F.log_softmax(logits.float(), dim=1), target, reduction="batchmean")


def grid_patches(x: torch.Tensor, count: int, side: int) -> list[torch.Tensor]:
    """``count`` patches of ``side`` px from a 3x3 grid over each image, each moved by a
    random jitter inside its cell (the same grid cells for the whole batch)."""
    b, _, h, w = x.shape
    free_y, free_x = max(h - 3 * side, 0), max(w - 3 * side, 0)
    cells = torch.randperm(9)[:count].tolist()
    out = []
    for cell in cells:
        r, c = divmod(cell, 3)
        y = r * (side + free_y // 3) + int(torch.randint(0, free_y // 3 + 1, ()))
        x0 = c * (side + free_x // 3) + int(torch.randint(0, free_x // 3 + 1, ()))
        out.append(x[:, :, y : y + side, x0 : x0 + side])
    return out


@register_task("obow")
class OBoW(SSLTask):
    """OBoW: predict a momentum teacher's bag-of-visual-words from perturbed crops."""

    views = 1

    def __init__(
        self,
        num_words: int = 1024,
        inv_delta: float = 15.0,
        kappa: float = 8.0,
        momentum: float = 0.99,
        levels: int = 2,
        crops: int = 2,
        patches: int = 5,
    ) -> None:
        super().__init__()
        if num_words < 1 or inv_delta <= 0 or kappa <= 0:
            raise ValueError(
                f"obow: num_words must be >= 1 and inv_delta, kappa > 0; got "
                f"{num_words}, {inv_delta}, {kappa}"
            )
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"obow: momentum must be in [0, 1], got {momentum}")
        if levels < 1 or crops < 0 or patches < 0 or crops + patches < 1:
            raise ValueError(
                "obow: levels must be >= 1, crops and patches >= 0 with at least one view; "
                f"got levels={levels}, crops={crops}, patches={patches}"
            )
        if patches > 9:
            raise ValueError(f"obow: at most 9 patches (a 3x3 grid), got {patches}")
        self.num_words, self.inv_delta, self.kappa = num_words, inv_delta, kappa
        self.momentum, self.levels, self.crops, self.patches = momentum, levels, crops, patches
        self.total_steps = 1
        self.indices: list[int] = []

    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        super().setup(model, data, recipe)
        info = list(getattr(model, "feature_info", []))
        if len(info) < self.levels:
            raise ValueError(
                f"obow: {type(model).__name__} lists {len(info)} feature levels, "
                f"levels={self.levels} asked; lower levels"
            )
        self.indices = list(range(len(info) - self.levels, len(info)))
        channels = [int(info[i].num_chs) for i in self.indices]
        self.frozen["teacher"] = copy.deepcopy(model)
        self.trainable["predictor"] = BowPredictor(channels, model.num_features, self.kappa)
        self.vocab = nn.ModuleList(
            BowVocabulary(self.num_words, c, self.inv_delta) for c in channels
        )
        side = data.img_size
        side_ok = getattr(model, "input_side_ok", None)
        self.patch_side = max(1, round(side * 96 / 256))
        self.patch_input = (
            self.patch_side if not callable(side_ok) or side_ok(self.patch_side) else side
        )
        self.total_steps = max(1, recipe.epochs * math.ceil(len(data.train) / recipe.batch_size))

    def to(self, device: torch.device) -> OBoW:
        super().to(device)
        self.vocab.to(device)
        return self

    def teacher_momentum(self, step: int) -> float:
        """Cosine from ``momentum`` at step 0 to 1 at the last step."""
        scale = 0.5 * (1 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))
        return 1 - (1 - self.momentum) * scale

    def student_views(self, x: torch.Tensor) -> list[torch.Tensor]:
        views = [simple_view(x, scale=(0.08, 0.6)) for _ in range(self.crops)]
        if self.patches:
            base = simple_view(x, scale=(0.36, 1.0))
            for p in grid_patches(base, self.patches, self.patch_side):
                if p.shape[-1] != self.patch_input:
                    p = F.interpolate(
                        p, size=self.patch_input, mode="bilinear", align_corners=False
                    )
                views.append(p)
        return views

    def loss(self, batch: Any, state: Any, update: bool) -> dict[str, Any]:
        x = raw_to_float(batch.raw)
        data = state.data
        with torch.no_grad():
            orig = random_resized_crop(x, x.shape[-1], scale=(1.0, 1.0)) if update else x
            maps = feature_maps(self.frozen["teacher"], normalize_images(orig, data), self.indices)
            targets = [v(m, update) for v, m in zip(self.vocab, maps, strict=True)]
            words = [v.words.clone() for v in self.vocab]
        views = self.student_views(x) if update else [x]
        losses = []
        for view in views:
            f = pooled_features(state.model, normalize_images(view, data)).float()
            logits = self.trainable["predictor"](f, words)
            losses.append(sum(bow_loss(lg, t) for lg, t in zip(logits, targets)) / len(targets))
        loss = sum(losses) / len(losses)
        probs = targets[-1].clamp_min(1e-12)
        perplexity = torch.exp(-(probs * probs.log()).sum(1)).mean()
        return {"loss": loss, "target_perplexity": perplexity}

    def step(self, batch: Any, state: Any) -> dict[str, Any]:
        return self.loss(batch, state, update=True)

    def eval_step(self, batch: Any, state: Any) -> dict[str, float]:
        out = self.loss(batch, state, update=False)
        return {k: float(v) for k, v in out.items()}

    def on_step_end(self, state: Any) -> None:
        ema_update(self.frozen["teacher"], state.model, self.teacher_momentum(int(state.step)))

    def state_dict(self) -> dict[str, torch.Tensor]:
        sd = super().state_dict()
        sd.update({f"teacher.{k}": v for k, v in self.frozen["teacher"].state_dict().items()})
        sd.update({f"vocab.{k}": v for k, v in self.vocab.state_dict().items()})
        return sd

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(sd)
        teacher = {k[len("teacher.") :]: v for k, v in sd.items() if k.startswith("teacher.")}
        self.frozen["teacher"].load_state_dict(teacher)
        self.vocab.load_state_dict(
            {k[len("vocab.") :]: v for k, v in sd.items() if k.startswith("vocab.")}
        )
