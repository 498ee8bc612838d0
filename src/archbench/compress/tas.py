"""TAS: network pruning by searching each layer's width with a learnable distribution, then
knowledge transfer to the pruned network.

*Network Pruning via Transformable Architecture Search* (Dong and Yang, NeurIPS 2019;
official release D-X-Y/NAS-Projects, ``lib/models/shape_searchs``). Every searched layer
of C channels has candidate widths ``int(C * r)`` for r in {0.3, 0.4, ..., 1.0} and a
learnable logit vector ``alpha``. In a training step two candidates are drawn from the
Gumbel-softmax distribution ``softmax((log_softmax(alpha) + g) / tau)`` (without
replacement), their feature maps (the first ``c`` channels) are aligned to the larger
width by channel-wise interpolation (CWI: adaptive average pooling over the channel
axis) and summed with the renormalized probabilities of the two draws, so the loss
reaches both the weights and ``alpha``; ``tau`` falls linearly from 10 to 0.1 over the
search. The expected width ``sum_j c_j softmax(alpha)_j`` gives the expected MACs, and
the cost loss is ``log(E[MACs])`` when the argmax architecture is above the target,
``-log(E[MACs])`` when it is more than 5% of the full MACs below, else 0, weighted by 2
(``get_flop_loss``, ``--FLOP_weight 2 --FLOP_tolerant 0.05``). After the search each
layer takes its most probable width; the network is pruned to those widths and trained by
knowledge distillation from the unpruned network (``KD_alpha 0.9``, ``KD_temperature 4``:
``(1 - a) CE + a T^2 KL``; archbench's ``distill.kd_loss``).

Searched layers in archbench: the inner widths of residual blocks (a block with ``conv1``
-> ``bn1`` -> ``act1`` -> ``conv2``, and ``act2`` -> ``conv3`` in bottlenecks), the
widths that are not tied to a residual sum. Deviations: the paper also searches the
block output widths and depth; its search alternates weight steps on one half of the
training data with ``alpha`` steps on the other, where here both are updated on each
batch; one BatchNorm serves every candidate width (the release keeps one per width); the
pruned network keeps the highest-magnitude channels (Torch-Pruning) and starts from the
searched weights instead of from scratch.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..train import ClassificationTask, register_task, soft_cross_entropy
from ._common import check_fraction, run_fit
from .registry import CompressContext, CompressResult, register_compressor

__all__ = [
    "TASDistillation",
    "TASSearchTask",
    "WidthSearch",
    "add_width_search",
    "channel_wise_interpolation",
    "flop_loss",
    "remove_width_search",
    "searched_widths",
]

WIDTH_RATIOS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def channel_wise_interpolation(x: torch.Tensor, channels: int) -> torch.Tensor:
    """TAS's CWI: (B, c, H, W) -> (B, channels, H, W) by average pooling over channels."""
    if x.shape[1] == channels:
        return x
    return F.adaptive_avg_pool3d(x, (channels, x.shape[2], x.shape[3]))


def flop_loss(
    expected: torch.Tensor, current: float, target: float, tolerance: float
) -> torch.Tensor:
    """``log E`` above the target, ``-log E`` more than ``tolerance`` below it, else 0."""
    if current > target:
        return torch.log(expected)
    if current < target - tolerance:
        return -torch.log(expected)
    return expected.new_zeros(())


class WidthSearch(nn.Module):
    """Wraps the activation after a searched conv: mixes two sampled widths in training,
    runs the most probable width otherwise (channels beyond it are zero)."""

    def __init__(
        self, act: nn.Module, channels: int, ratios: tuple[float, ...] = WIDTH_RATIOS
    ) -> None:
        super().__init__()
        self.act = act
        self.channels = channels
        self.choices = sorted({max(1, int(channels * r)) for r in ratios})
        self.alpha = nn.Parameter(torch.zeros(len(self.choices)))
        nn.init.normal_(self.alpha, 0.0, 0.01)  # as the official release
        self.tau = 10.0

    def probabilities(self) -> torch.Tensor:
        return self.alpha.softmax(dim=0)

    def expected_width(self) -> torch.Tensor:
        return (
            self.probabilities()
            * torch.tensor(self.choices, dtype=torch.float, device=self.alpha.device)
        ).sum()

    def best_width(self) -> int:
        return self.choices[int(self.alpha.detach().argmax())]

    def _fragment(self, y: torch.Tensor, c: int, width: int) -> torch.Tensor:
        out = channel_wise_interpolation(y[:, :c], width)
        return F.pad(out, (0, 0, 0, 0, 0, self.channels - width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(x)
        if not self.training:
            return self._fragment(y, self.best_width(), self.best_width())
        gumbel = -torch.empty_like(self.alpha).exponential_().log()
        logits = (self.alpha.log_softmax(dim=0) + gumbel) / self.tau
        with torch.no_grad():
            n = min(2, len(self.choices))
            idx = torch.multinomial(logits.softmax(dim=0) + 1e-7, n, replacement=False)
        weights = logits[idx].softmax(dim=0)
        widths = [self.choices[int(i)] for i in idx]
        top = max(widths)
        return sum(w * self._fragment(y, c, top) for w, c in zip(weights, widths, strict=True))


def _search_points(model: nn.Module) -> list[tuple[nn.Module, str, str, str]]:
    """(block, activation attribute, conv producing, conv consuming) of searchable widths."""
    points = []
    for block in model.modules():
        for a, prod, cons in (("act1", "conv1", "conv2"), ("act2", "conv2", "conv3")):
            act, c1, c2 = (getattr(block, k, None) for k in (a, prod, cons))
            if (
                isinstance(c1, nn.Conv2d)
                and isinstance(c2, nn.Conv2d)
                and isinstance(act, (nn.ReLU, nn.GELU, nn.SiLU, nn.Identity, WidthSearch))
                and c1.groups == 1
                and c2.groups == 1
                and c2.in_channels == c1.out_channels
            ):
                points.append((block, a, prod, cons))
    return points


def add_width_search(
    model: nn.Module, ratios: tuple[float, ...] = WIDTH_RATIOS
) -> list[WidthSearch]:
    """Wrap every searchable activation in a :class:`WidthSearch` (in place)."""
    out = []
    for block, a, prod, _ in _search_points(model):
        act = getattr(block, a)
        if not isinstance(act, WidthSearch):
            act = WidthSearch(act, getattr(block, prod).out_channels, ratios)
            setattr(block, a, act)
        out.append(act)
    if not out:
        raise ValueError(
            f"{type(model).__name__} has no residual block with conv1 -> act1 -> conv2 widths "
            "to search; TAS here supports ResNet-style blocks (resnet_*, resnet*_cifar, ...)"
        )
    return out


def remove_width_search(model: nn.Module) -> dict[str, int]:
    """Unwrap the searched activations; returns {producing conv path: searched width}."""
    widths = {}
    names = {m: n for n, m in model.named_modules()}
    for block, a, prod, _ in _search_points(model):
        act = getattr(block, a)
        if isinstance(act, WidthSearch):
            widths[f"{names[block]}.{prod}".lstrip(".")] = act.best_width()
            setattr(block, a, act.act)
    return widths


def searched_widths(model: nn.Module) -> dict[str, int]:
    names = {m: n for n, m in model.named_modules()}
    return {
        f"{names[block]}.{prod}".lstrip("."): getattr(block, a).best_width()
        for block, a, prod, _ in _search_points(model)
        if isinstance(getattr(block, a), WidthSearch)
    }


class _MacModel:
    """MACs of every conv/linear at full width, and which searched widths scale them."""

    def __init__(self, model: nn.Module, example: torch.Tensor) -> None:
        macs: dict[nn.Module, float] = {}

        def hook(m: nn.Module, i: Any, o: torch.Tensor) -> None:
            k = m.weight[0].numel()
            macs[m] = float(o.numel() // o.shape[0] * k)

        layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        hooks = [m.register_forward_hook(hook) for m in layers]
        was = model.training
        model.eval()
        with torch.no_grad():
            model(example[:1])
        model.train(was)
        for h in hooks:
            h.remove()
        self.macs = macs
        self.out_of: dict[nn.Module, WidthSearch] = {}
        self.in_of: dict[nn.Module, WidthSearch] = {}
        for block, a, prod, cons in _search_points(model):
            ws = getattr(block, a)
            if isinstance(ws, WidthSearch):
                self.out_of[getattr(block, prod)] = ws
                self.in_of[getattr(block, cons)] = ws
        self.full = sum(macs.values())

    def total(self, width_of) -> Any:
        """Sum of MACs with each searched width's fraction given by ``width_of(ws)``."""
        total = 0.0
        for m, v in self.macs.items():
            f = 1.0
            if m in self.out_of:
                f = f * width_of(self.out_of[m]) / self.out_of[m].channels
            if m in self.in_of:
                f = f * width_of(self.in_of[m]) / self.in_of[m].channels
            total = total + v * f
        return total


@register_task("tas_search")
class TASSearchTask(ClassificationTask):
    """TAS width search: CE plus the weighted cost loss toward ``flop_ratio`` of the MACs."""

    name = "tas_search"

    def __init__(
        self,
        flop_ratio: float = 0.5,
        flop_weight: float = 2.0,
        flop_tolerant: float = 0.05,
        tau_max: float = 10.0,
        tau_min: float = 0.1,
    ) -> None:
        super().__init__()
        self.flop_ratio = check_fraction("flop_ratio", flop_ratio)
        if flop_weight < 0 or not 0 <= flop_tolerant < 1 or not 0 < tau_min <= tau_max:
            raise ValueError(
                "need flop_weight >= 0, 0 <= flop_tolerant < 1, 0 < tau_min <= tau_max"
            )
        self.flop_weight, self.flop_tolerant = float(flop_weight), float(flop_tolerant)
        self.tau_max, self.tau_min = float(tau_max), float(tau_min)
        self.args = {
            "flop_ratio": self.flop_ratio,
            "flop_weight": self.flop_weight,
            "flop_tolerant": self.flop_tolerant,
            "tau_max": self.tau_max,
            "tau_min": self.tau_min,
        }

    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        self.searchers = add_width_search(model)
        example = torch.zeros(1, *data.train.images.shape[1:])
        self.macs = _MacModel(model, example.to(next(model.parameters()).device))
        self.epochs = max(1, int(recipe.epochs)) if recipe is not None else 1

    def on_epoch_start(self, state: Any) -> None:
        tau = self.tau_max - (self.tau_max - self.tau_min) * state.epoch / self.epochs
        for s in self.searchers:
            s.tau = tau

    def cost(self) -> tuple[torch.Tensor, float, torch.Tensor]:
        expected = self.macs.total(lambda ws: ws.expected_width())
        current = float(self.macs.total(lambda ws: ws.best_width()))
        loss = flop_loss(
            expected / self.macs.full, current / self.macs.full, self.flop_ratio, self.flop_tolerant
        )
        return loss, current / self.macs.full, expected / self.macs.full

    def step(self, batch: Any, state: Any) -> dict[str, Any]:
        logits = state.model(batch.images)
        ce = soft_cross_entropy(logits, batch.targets)
        cost, ratio, _ = self.cost()
        acc = (logits.detach().argmax(-1) == batch.labels).float().mean()
        return {
            "loss": ce + self.flop_weight * cost,
            "ce": ce.detach(),
            "flop_loss": cost.detach(),
            "mac_ratio": ratio,
            "acc": acc,
        }


@register_task("tas_kd")
class TASDistillation(ClassificationTask):
    """Knowledge transfer to the pruned network: ``(1 - a) CE + a T^2 KL(teacher || net)``.

    The teacher is given in process (``task.teacher_model``) or as a run folder."""

    name = "tas_kd"

    def __init__(self, teacher: str = "", alpha: float = 0.9, temperature: float = 4.0) -> None:
        super().__init__()
        check_fraction("alpha", alpha, low_open=False, high_open=False)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.teacher_spec, self.alpha, self.temperature = (
            str(teacher),
            float(alpha),
            float(temperature),
        )
        self.teacher_model: nn.Module | None = None
        self.args = {
            "teacher": self.teacher_spec,
            "alpha": self.alpha,
            "temperature": self.temperature,
        }

    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        teacher = self.teacher_model
        if teacher is None:
            if not self.teacher_spec:
                raise ValueError("tas_kd needs a teacher: a run folder (teacher=DIR)")
            from ..distill.teacher import load_teacher

            teacher, _ = load_teacher(self.teacher_spec)
        self.frozen["teacher"] = teacher

    def step(self, batch: Any, state: Any) -> dict[str, Any]:
        from ..distill.logit import kd_loss

        logits = state.model(batch.images)
        with torch.no_grad():
            t_logits = self.frozen["teacher"](batch.images)
        ce = soft_cross_entropy(logits, batch.targets)
        kd = kd_loss(logits, t_logits, self.temperature)
        acc = (logits.detach().argmax(-1) == batch.labels).float().mean()
        return {
            "loss": (1 - self.alpha) * ce + self.alpha * kd,
            "ce": ce.detach(),
            "kd": kd.detach(),
            "acc": acc,
        }


def _check_args(
    flop_ratio: Any = 0.5, search_epochs: Any = 0, kd_epochs: Any = 0, **_: Any
) -> None:
    check_fraction("flop_ratio", flop_ratio)
    if int(search_epochs) < 0 or int(kd_epochs) < 0:
        raise ValueError("search_epochs and kd_epochs must be >= 0 (0: the recipe's epochs)")


@register_compressor("tas", check=_check_args)
def tas(
    model: nn.Module,
    ctx: CompressContext,
    flop_ratio: float = 0.5,
    search_epochs: int = 0,
    kd_epochs: int = 0,
    ignore: str = "",
) -> CompressResult:
    """TAS: search widths for ``search_epochs`` (0: the recipe's), prune to them, then
    distil from the unpruned model for ``kd_epochs`` (0: the recipe's)."""
    from .structured import prune_structured

    flop_ratio = check_fraction("flop_ratio", flop_ratio)
    if ctx.data is None:
        raise ValueError("TAS trains (search and distillation); pass --data SPEC")
    teacher = copy.deepcopy(model).eval()
    search = TASSearchTask(flop_ratio)
    result = run_fit(model, ctx, search, search.args, "tas_search", epochs=search_epochs or None)
    _, mac_ratio, _ = search.cost()
    alphas = {
        n: [round(float(p), 4) for p in s.probabilities().detach()]
        for n, s in zip(searched_widths(model), search.searchers, strict=True)
    }
    widths = remove_width_search(model)
    full = {n: dict(model.named_modules())[n].out_channels for n in widths}
    ratios = {n: 1 - w / full[n] for n, w in widths.items() if w < full[n]}
    pruned, info = prune_structured(
        model, ctx.example_input(1), 0.0, ignore=ignore or None, layer_ratios=ratios
    )
    kd = TASDistillation()
    kd.teacher_model = teacher
    run_fit(pruned, ctx, kd, kd.args, "tas_kd", epochs=kd_epochs or None)
    info.update(
        flop_ratio=flop_ratio,
        searched_mac_ratio=mac_ratio,
        widths=widths,
        width_probabilities=alphas,
        search_status=getattr(result, "status", None),
    )
    return CompressResult(pruned, info=info)
