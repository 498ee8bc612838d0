"""N2N learning: compressing a teacher into a student by policy-gradient reinforcement
learning, first removing layers, then shrinking the layers that remain.

*N2N Learning: Network to Network Compression via Policy Gradient Reinforcement
Learning* (Ashok, Rhinehart, Beainy and Kitani, ICLR 2018). The teacher is read as a
sequence of layers, each described by a small state vector. Stage one: a bidirectional
LSTM reads the sequence and gives every layer a probability of being kept; a sampled
keep/remove action per layer defines a student. Stage two: a second LSTM reads the kept
layers and chooses a shrink ratio for each. Each student is trained briefly by knowledge
distillation from the teacher (task ``n2n_student``) and scored on the validation split
with the paper's reward ``R = R_c * R_a``, where ``C = 1 - params(student)/params(teacher)``,
``R_c = C (2 - C)`` and ``R_a = acc(student) / acc(teacher)``; the policies are trained with
REINFORCE, ``-(R - b) * sum log pi(a)``, with ``b`` an exponential moving average of the
reward (Adam, lr 0.003 as the paper). Each stage keeps its best student; stage two starts
from the best stage-one architecture.

In archbench a "layer" is a residual block: a block whose input and output shapes agree
(no downsampling, no width change) can be removed (replaced by an identity), and every
block's inner width (``conv1`` -> ``conv2``, as TAS searches it) can shrink to one of
``shrink_ratios`` through Torch-Pruning. State of a block: log input and inner widths,
stride, removability, its position in the network. Deviations: the paper's layer state
also holds kernel size and padding (constant across archbench's ResNet blocks) and its
students train for several epochs; here ``student_epochs`` (default 1) bounds the cost,
and the reward's constraint penalties for infeasible students are not needed because every
sampled student is a valid network.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn as nn

from ..train import register_task
from ._common import count_params, run_fit
from .registry import CompressContext, CompressResult, register_compressor
from .tas import TASDistillation, _search_points

__all__ = [
    "N2NStudentTask",
    "RemovalPolicy",
    "ShrinkPolicy",
    "block_states",
    "build_student",
    "n2n_reward",
    "residual_blocks",
]


@register_task("n2n_student")
class N2NStudentTask(TASDistillation):
    """Knowledge distillation of a sampled student from the teacher (in process or a run)."""

    name = "n2n_student"


def n2n_reward(
    student_params: int, teacher_params: int, student_acc: float, teacher_acc: float
) -> float:
    """The paper's ``R = C (2 - C) * acc_s / acc_t`` with ``C = 1 - p_s / p_t``."""
    c = 1.0 - student_params / teacher_params
    r_a = student_acc / teacher_acc if teacher_acc > 0 else 0.0
    return c * (2.0 - c) * r_a


def residual_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's blocks with a searchable inner width (TAS's search points), in order."""
    names = {m: n for n, m in model.named_modules()}
    seen, out = set(), []
    for block, _, _, _ in _search_points(model):
        if id(block) not in seen:
            seen.add(id(block))
            out.append((names[block], block))
    if not out:
        raise ValueError(
            f"{type(model).__name__} has no residual blocks with conv1 -> conv2; N2N here "
            "supports ResNet-style models (resnet_*, resnet*_cifar, ...)"
        )
    return out


def _stride(block: nn.Module) -> int:
    """The block's stride (on ``conv1`` in basic blocks, on ``conv2`` in bottlenecks)."""
    strides = [getattr(block, k).stride for k in ("conv1", "conv2") if hasattr(block, k)]
    return max(s[0] if isinstance(s, tuple) else int(s) for s in strides)


def _removable(block: nn.Module) -> bool:
    return getattr(block, "downsample", None) is None and _stride(block) == 1


def block_states(model: nn.Module) -> torch.Tensor:
    """(blocks, 5) state: log2 input width, log2 inner width, stride, removable, position."""
    blocks = residual_blocks(model)
    rows = []
    for i, (_, b) in enumerate(blocks):
        rows.append(
            [
                math.log2(b.conv1.in_channels),
                math.log2(b.conv1.out_channels),
                float(_stride(b)),
                float(_removable(b)),
                i / max(1, len(blocks) - 1),
            ]
        )
    return torch.tensor(rows)


class RemovalPolicy(nn.Module):
    """Stage one: a bidirectional LSTM over the blocks -> probability of keeping each."""

    def __init__(self, state_dim: int = 5, hidden: int = 30) -> None:
        super().__init__()
        self.lstm = nn.LSTM(state_dim, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, 1)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(states.unsqueeze(0))
        return torch.sigmoid(self.out(h)).view(-1)


class ShrinkPolicy(nn.Module):
    """Stage two: an LSTM over the kept blocks -> a distribution over shrink ratios."""

    def __init__(self, num_actions: int, state_dim: int = 5, hidden: int = 30) -> None:
        super().__init__()
        self.lstm = nn.LSTM(state_dim, hidden, batch_first=True)
        self.out = nn.Linear(hidden, num_actions)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(states.unsqueeze(0))
        return self.out(h).squeeze(0).log_softmax(dim=-1)


def build_student(
    teacher: nn.Module, keep: list[bool], inner_ratio: list[float], example: torch.Tensor
) -> nn.Module:
    """A copy of ``teacher`` without the removed blocks and with shrunk inner widths."""
    from .structured import prune_structured

    student = copy.deepcopy(teacher)
    blocks = residual_blocks(student)
    if len(keep) != len(blocks) or len(inner_ratio) != len(blocks):
        raise ValueError(f"need one action per block ({len(blocks)})")
    ratios = {}
    for (name, block), k, r in zip(blocks, keep, inner_ratio, strict=True):
        if not k and _removable(block):
            parent, _, attr = name.rpartition(".")
            holder = student.get_submodule(parent) if parent else student
            if isinstance(holder, nn.Sequential):
                holder[int(attr)] = nn.Identity()
            else:
                setattr(holder, attr, nn.Identity())
        elif r < 1.0:
            ratios[f"{name}.conv1"] = 1.0 - r
    if ratios:
        student, _ = prune_structured(student, example, 0.0, layer_ratios=ratios)
    return student


class _Search:
    """Shared pieces of both stages: students, their training and their reward."""

    def __init__(self, teacher: nn.Module, ctx: Any, student_epochs: int) -> None:
        from ..train import evaluate

        self.teacher, self.ctx, self.epochs = teacher, ctx, student_epochs
        self.example = ctx.example_input(1)
        self.teacher_params = count_params(teacher)
        self.teacher_acc = evaluate(teacher, ctx.data, split="val")["top1"]
        self.n = len(residual_blocks(teacher))

    def score(self, keep: list[bool], ratios: list[float]) -> tuple[float, nn.Module, dict]:
        from ..train import evaluate

        student = build_student(self.teacher, keep, ratios, self.example)
        task = N2NStudentTask()
        task.teacher_model = copy.deepcopy(self.teacher).eval()
        run_fit(student, self.ctx, task, task.args, "n2n_student", epochs=self.epochs)
        acc = evaluate(student, self.ctx.data, split="val")["top1"]
        params = count_params(student)
        r = n2n_reward(params, self.teacher_params, acc, self.teacher_acc)
        return r, student, {"reward": r, "val_top1": acc, "params": params}


def _reinforce(
    policy: nn.Module, sample, search: _Search, episodes: int, lr: float, log: Any
) -> tuple[float, nn.Module | None, list, list[dict]]:
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    baseline, best = None, (-math.inf, None, None)
    history = []
    for ep in range(episodes):
        logp, actions = sample()
        reward, student, facts = search.score(*actions)
        advantage = 0.0 if baseline is None else reward - baseline
        baseline = reward if baseline is None else 0.9 * baseline + 0.1 * reward
        loss = -advantage * logp
        opt.zero_grad()
        loss.backward()
        opt.step()
        facts.update(episode=ep, keep=[bool(k) for k in actions[0]], ratios=list(actions[1]))
        history.append(facts)
        log(f"n2n episode {ep}: reward {reward:.4f} top1 {facts['val_top1']:.3f}")
        if reward > best[0]:
            best = (reward, student, actions)
    return best[0], best[1], best[2], history


def _parse_choices(shrink_ratios: Any) -> list[float]:
    try:
        choices = [float(t) for t in str(shrink_ratios).replace(" ", "").split(",") if t]
    except ValueError:
        choices = []
    if not choices or any(not 0 < c <= 1 for c in choices):
        raise ValueError(
            f"shrink_ratios must be comma-separated numbers in (0, 1], got {shrink_ratios!r}"
        )
    return choices


def _check_args(
    remove_episodes: Any = 10,
    shrink_episodes: Any = 10,
    student_epochs: Any = 1,
    shrink_ratios: Any = "0.25,0.5,0.75,1.0",
    **_: Any,
) -> None:
    if int(remove_episodes) < 1 or int(shrink_episodes) < 0 or int(student_epochs) < 1:
        raise ValueError("need remove_episodes >= 1, shrink_episodes >= 0, student_epochs >= 1")
    _parse_choices(shrink_ratios)


@register_compressor("n2n", check=_check_args)
def n2n(
    model: nn.Module,
    ctx: CompressContext,
    remove_episodes: int = 10,
    shrink_episodes: int = 10,
    student_epochs: int = 1,
    shrink_ratios: str = "0.25,0.5,0.75,1.0",
    lr: float = 0.003,
    seed: int = 0,
) -> CompressResult:
    """N2N: ``remove_episodes`` of layer removal, then ``shrink_episodes`` of shrinkage."""
    if ctx.data is None:
        raise ValueError("N2N trains and scores students; pass --data SPEC")
    _check_args(remove_episodes, shrink_episodes, student_epochs, shrink_ratios)
    choices = _parse_choices(shrink_ratios)
    teacher = copy.deepcopy(model).eval()
    search = _Search(teacher, ctx, int(student_epochs))
    states = block_states(teacher)
    removable = states[:, 3].bool()
    g = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    removal = RemovalPolicy()

    def sample_removal():
        p = removal(states)
        keep = torch.bernoulli(p.detach(), generator=g).bool() | ~removable
        logp = torch.where(keep, p, 1 - p).clamp_min(1e-6).log()[removable].sum()
        return logp, (keep.tolist(), [1.0] * search.n)

    r1, best1, act1, hist1 = _reinforce(
        removal, sample_removal, search, int(remove_episodes), lr, ctx.log
    )
    keep = act1[0]
    best = (r1, best1, act1)
    hist2: list[dict] = []
    if int(shrink_episodes) > 0:
        kept_idx = [i for i, k in enumerate(keep) if k]
        shrink = ShrinkPolicy(len(choices))

        def sample_shrink():
            logits = shrink(states[kept_idx])
            a = torch.multinomial(logits.exp().detach(), 1, generator=g).view(-1)
            ratios = [1.0] * search.n
            for j, i in enumerate(kept_idx):
                ratios[i] = choices[int(a[j])]
            return logits.gather(1, a.view(-1, 1)).sum(), (keep, ratios)

        r2, best2, act2, hist2 = _reinforce(
            shrink, sample_shrink, search, int(shrink_episodes), lr, ctx.log
        )
        if r2 > best[0]:
            best = (r2, best2, act2)
    reward, student, actions = best
    info = {
        "reward": reward,
        "keep": [bool(k) for k in actions[0]],
        "inner_ratios": list(actions[1]),
        "teacher_val_top1": search.teacher_acc,
        "params_ratio": count_params(student) / search.teacher_params,
        "history": hist1 + hist2,
    }
    return CompressResult(student, info=info)
