"""Selective state-space scan (S6, *Mamba: Linear-Time Sequence Modeling with Selective
State Spaces*) in plain PyTorch, and the Mamba mixer built on it.

The recurrence, per channel ``d`` and state ``n``::

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t        y_t = <h_t, C_t> + D * u_t

Two implementations compute it:

- :func:`selective_scan_ref`: a sequential loop over time, the reference;
- :func:`selective_scan`: chunked. Inside a chunk of ``T`` steps the state is
  ``h_t = exp(S_t) * h_0 + exp(S_t - m) * sum_{s<=t} exp(m - S_s) x_s`` with ``S`` the
  cumulative sum of log-decays (``cumsum``) and ``m`` half the chunk's total, so every
  exponent stays within float32's range. The loop runs over ``L / T`` chunks instead of
  ``L`` steps, and each chunk's work is a handful of vectorised ops that stay in cache.

Both agree to float tolerance, gradients included (``tests/layers/test_ssm.py``); the
speed-up is measured by ``benchmarks/selective_scan.py``.

The fast form clamps per-step log-decays at ``-LOG_DECAY_FLOOR`` (= -10): a step that
keeps less than ``exp(-10)`` (4.5e-5) of the state keeps exactly that much. This bounds
the exponents of a float32 chunk (so ``chunk_size * 10 <= 160``, at most 16 steps); plain
Mamba has no such floor (a deviation whose effect on the state is below 5e-5 of its size,
checked against the unfloored recurrence in ``tests/layers/test_ssm.py``).

``selective_scan(..., exact=True)`` is the exact path: the same chunked form computed in
float64, whose exponent range lets the floor drop to ``1400 / chunk_size`` (at least 37.8
for the allowed chunks of up to 37 steps, 43.75 at the default 32). A step then keeps at
most ``exp(-37.8)`` (3.5e-17) of the state, below float64's rounding of it, so the result
is the unfloored recurrence to float64 rounding for any decay, however strong; it costs
about 2.5-3x the float32 form on a CPU. ``selective_scan_ref(..., log_decay_floor=None)``
is the exact sequential recurrence. (A log-space form with ``logcumsumexp`` and an
SSD-style masked T x T decay matrix were both tried: in float32 the first loses accuracy
to cancellation and both ran 5-50x slower than the float64 chunks.)

Tensor layout follows the Mamba release: ``u, delta`` are (B, D, L); ``A`` is (D, N);
``B, C`` are (B, N, L) (shared by all channels) or (B, D, N, L) (per channel).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "LOG_DECAY_FLOOR",
    "MambaMixer1d",
    "SelectiveSSM",
    "selective_scan",
    "selective_scan_ref",
]

LOG_DECAY_FLOOR = 10.0
_CHUNK_LOG_RANGE = 160.0  # float32: exp() of +-80 is finite
_CHUNK_LOG_RANGE_64 = 1400.0  # float64: exp() of +-700 is finite
EXACT_MAX_CHUNK = 37  # 1400 / 37 = 37.8: exp(-37.8) is below float64's rounding


def _prepare(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate shapes; return (delta, B, C) with B and C as (B, D or 1, N, L)."""
    if u.ndim != 3 or delta.shape != u.shape:
        raise ValueError(
            f"u and delta must both be (batch, channels, length); got {tuple(u.shape)} "
            f"and {tuple(delta.shape)}"
        )
    b, d, length = u.shape
    if A.ndim != 2 or A.shape[0] != d:
        raise ValueError(f"A must be (channels={d}, d_state), got {tuple(A.shape)}")
    n = A.shape[1]
    out = []
    for name, m in (("B", B), ("C", C)):
        if m.ndim == 3 and m.shape == (b, n, length):
            m = m.unsqueeze(1)
        elif not (m.ndim == 4 and m.shape == (b, d, n, length)):
            raise ValueError(
                f"{name} must be (batch, d_state, length)={(b, n, length)} or "
                f"(batch, channels, d_state, length)={(b, d, n, length)}, got {tuple(m.shape)}"
            )
        out.append(m)
    if delta_bias is not None:
        delta = delta + delta_bias.view(1, -1, 1)
    if delta_softplus:
        delta = F.softplus(delta)
    return delta, out[0], out[1]


def _finish(
    y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None
) -> torch.Tensor:
    if D is not None:
        y = y + u * D.view(1, -1, 1)
    if z is not None:
        y = y * F.silu(z)
    return y


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    log_decay_floor: float | None = LOG_DECAY_FLOOR,
) -> torch.Tensor:
    """Sequential selective scan: one step of the recurrence per time step. Returns (B, D, L).

    ``log_decay_floor=None`` is the exact recurrence (no floor); the default floor matches
    the fast :func:`selective_scan`. Computes in float32, or float64 for float64 inputs.
    """
    delta, Bm, Cm = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    dtype = u.dtype
    work = torch.float64 if dtype == torch.float64 else torch.float32
    uf, df = u.to(work), delta.to(work)
    log_decay = df.unsqueeze(2) * A.to(work).view(1, A.shape[0], A.shape[1], 1)  # (B, D, N, L)
    if log_decay_floor is not None:
        log_decay = log_decay.clamp(min=-log_decay_floor)
    decay = log_decay.exp()
    drive = (df * uf).unsqueeze(2) * Bm.to(work)  # (B, D, N, L)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1], dtype=work)
    ys = []
    # unbind once: indexing inside the loop would make the backward pass quadratic in L
    for a_t, x_t, c_t in zip(decay.unbind(-1), drive.unbind(-1), Cm.to(work).unbind(-1)):
        h = a_t * h + x_t
        ys.append((h * c_t).sum(2))
    y = torch.stack(ys, dim=-1)
    return _finish(y, uf, D, z.to(work) if z is not None else None).to(dtype)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    chunk_size: int | None = None,
    exact: bool = False,
) -> torch.Tensor:
    """Chunked selective scan; same arguments and result as :func:`selective_scan_ref`.

    Work is vectorised over each chunk of ``chunk_size`` steps (cumulative sums of
    log-decays); a loop of ``ceil(L / chunk_size)`` iterations chains them. By default
    float32 chunks of 16 steps with the ``LOG_DECAY_FLOOR``; ``exact=True`` computes in
    float64 chunks of up to ``EXACT_MAX_CHUNK`` steps (32 by default) with a floor below
    float64's rounding, i.e. the unfloored recurrence.
    """
    if exact:
        chunk_size = 32 if chunk_size is None else chunk_size
        if not 1 <= chunk_size <= EXACT_MAX_CHUNK:
            raise ValueError(
                f"chunk_size must be in [1, {EXACT_MAX_CHUNK}] with exact=True (the float64 "
                f"decay floor 1400/chunk_size must stay below float64's rounding), got "
                f"{chunk_size}"
            )
        floor, work = _CHUNK_LOG_RANGE_64 / chunk_size, torch.float64
    else:
        chunk_size = 16 if chunk_size is None else chunk_size
        if chunk_size < 1 or chunk_size * LOG_DECAY_FLOOR > _CHUNK_LOG_RANGE:
            raise ValueError(
                f"chunk_size must be in [1, {int(_CHUNK_LOG_RANGE // LOG_DECAY_FLOOR)}] so that "
                f"float32 cumulative decays stay finite (or pass exact=True), got {chunk_size}"
            )
        floor, work = LOG_DECAY_FLOOR, torch.float32
    delta, Bm, Cm = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    dtype = u.dtype
    b, d, length = u.shape
    n = A.shape[1]
    t = min(chunk_size, length)
    uf, df = u.to(work), delta.to(work)
    Bm, Cm = Bm.to(work), Cm.to(work)
    # Chunk by chunk, so that each chunk's (B, D, N, T) work stays in cache. Inside a
    # chunk S is the cumulative log-decay, re-centred on half the chunk's total m so that
    # exp(S - m) and exp(m - S) both stay inside float32's range:
    #   h_t = exp(S_t - m) * (exp(m) * h_0 + sum_{s<=t} exp(m - S_s) x_s)
    A4 = A.to(work).view(1, d, n, 1)
    dtu = df * uf
    h = uf.new_zeros(b, d, n)
    ys = []
    for dt_c, dtu_c, b_c, c_c in zip(
        df.split(t, -1), dtu.split(t, -1), Bm.split(t, -1), Cm.split(t, -1)
    ):
        cum = (dt_c.unsqueeze(2) * A4).clamp(min=-floor).cumsum(-1)
        mid = 0.5 * cum[..., -1:]
        grow = (cum - mid).exp()
        partial = (dtu_c.unsqueeze(2) * b_c * (mid - cum).exp()).cumsum(-1)
        states = grow * (partial + mid.exp() * h.unsqueeze(-1))
        ys.append((states * c_c).sum(2))
        h = states[..., -1]
    y = torch.cat(ys, dim=-1)
    return _finish(y, uf, D, z.to(work) if z is not None else None).to(dtype)


class SelectiveSSM(nn.Module):
    """The input-dependent part of a Mamba block: (dt, B, C) from the activations, then a scan.

    Takes and returns (B, D, L). ``forward`` accepts ``extra_b`` (broadcastable to
    (B, N, L)), added to the input-dependent B (PlainMamba's direction tokens).
    ``use_ref`` switches to the sequential reference scan.
    ``exact`` selects the exact (float64, unfloored) chunked scan.
    """

    def __init__(
        self,
        d_inner: int,
        d_state: int = 16,
        dt_rank: int = 1,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        chunk_size: int = 16,
        exact: bool = False,
    ) -> None:
        super().__init__()
        if d_state < 1 or dt_rank < 1:
            raise ValueError(f"need d_state >= 1 and dt_rank >= 1; got {d_state}, {dt_rank}")
        self.d_inner, self.d_state, self.dt_rank = d_inner, d_state, dt_rank
        self.chunk_size = chunk_size
        self.exact = exact
        self.use_ref = False
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        self.A_log = nn.Parameter(
            torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1)
        )
        self.D = nn.Parameter(torch.ones(d_inner))
        self._init_dt(dt_min, dt_max)

    def _init_dt(self, dt_min: float, dt_max: float) -> None:
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        with torch.no_grad():
            dt = torch.exp(
                torch.rand(self.d_inner, device=self.dt_proj.bias.device)
                * (math.log(dt_max) - math.log(dt_min))
                + math.log(dt_min)
            ).clamp(min=1e-4)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def forward(self, x: torch.Tensor, extra_b: torch.Tensor | None = None) -> torch.Tensor:
        proj = self.x_proj(x.transpose(1, 2))  # (B, L, R + 2N)
        dt, Bm, Cm = proj.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)
        Bm, Cm = Bm.transpose(1, 2), Cm.transpose(1, 2)
        if extra_b is not None:
            Bm = Bm + extra_b
        A = -torch.exp(self.A_log.float())
        scan = selective_scan_ref if self.use_ref else selective_scan
        kwargs = (
            {}
            if self.use_ref
            else {"exact": True}
            if self.exact
            else {"chunk_size": self.chunk_size}
        )
        return scan(
            x,
            dt,
            A,
            Bm.contiguous(),
            Cm.contiguous(),
            self.D.float(),
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            **kwargs,
        )


class MambaMixer1d(nn.Module):
    """The Mamba (S6) sequence mixer on (B, L, C) tokens.

    in_proj to ``x`` and gate ``z`` -> causal depthwise conv1d on ``x`` -> SiLU ->
    selective SSM -> ``* silu(z)`` -> out_proj. ``self.ssm.use_ref`` picks the
    sequential scan.
    """

    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2.0,
        dt_rank: int | None = None,
        conv_bias: bool = True,
        bias: bool = False,
        chunk_size: int = 16,
    ) -> None:
        super().__init__()
        if d_conv < 1 or expand <= 0:
            raise ValueError(f"need d_conv >= 1 and expand > 0; got {d_conv}, {expand}")
        self.d_inner = int(expand * dim)
        self.in_proj = nn.Linear(dim, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(
            self.d_inner,
            self.d_inner,
            d_conv,
            padding=d_conv - 1,
            groups=self.d_inner,
            bias=conv_bias,
        )
        rank = dt_rank if dt_rank is not None else math.ceil(dim / 16)
        self.ssm = SelectiveSSM(self.d_inner, d_state, rank, chunk_size=chunk_size)
        self.out_proj = nn.Linear(self.d_inner, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        x, z = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)
        x = F.silu(self.conv1d(x)[..., :length])
        y = self.ssm(x) * F.silu(z)
        return self.out_proj(y.transpose(1, 2))
