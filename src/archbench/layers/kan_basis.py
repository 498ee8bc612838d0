"""Basis functions for Kolmogorov-Arnold layers: one contract, many bases.

A basis maps ``x`` of shape ``(..., in_features)`` to features of shape
``(..., in_features, n_basis)``; a KAN layer then mixes them with one weight tensor
``(out, in_features, n_basis)``, so every univariate edge function is
``phi_oi(x_i) = sum_k W[o, i, k] * B_k(x_i)``. All bases are evaluated batched and
vectorised over every input feature at once (a short loop over the polynomial degree or
spline order is the only Python loop).

Bases and the papers they come from:

- ``bspline``: B-splines of order ``k`` on a per-feature grid, with grid update from
  samples and grid extension (*KAN: Kolmogorov-Arnold Networks*, Liu et al., 2024).
- ``rbf``: Gaussian radial basis functions on a uniform grid (FastKAN's approximation
  of cubic B-splines).
- ``rswaf``: FasterKAN's reflectional switch functions 1 - tanh((x - c_k) / h)^2.
- ``chebyshev``, ``legendre``, ``gram``, ``hermite``, ``jacobi``: orthogonal polynomials
  by their three-term recurrences on ``tanh(x)`` (ChebyKAN, KALN, KAGN and relatives
  studied in *Kolmogorov-Arnold Convolutions: Design Principles and Empirical Studies*,
  Drokin, 2024). ``gram`` is the monic discrete-Legendre (Gram) family on ``num_points``
  equidistant points; as ``num_points`` grows it tends to monic Legendre.
- ``mexican_hat``, ``morlet``: wavelet frames (Wav-KAN); each input feature carries
  ``n_basis`` translated and dilated copies with learnable centres and scales.
- ``rational``: the group-rational function ``P(x) / (1 + sum_j |b_j| |x|^j)`` of
  *Kolmogorov-Arnold Transformer* (Yang & Wang, 2024), as its released kernel computes
  it: one numerator shared by all groups, one denominator per group of input features,
  coefficients initialised to fit identity/GELU/swish (variance-preserving
  initialisation: ``second_moment`` gives ``E[F(x)^2]`` for ``x ~ N(0, 1)``).
- ``selectable``: *Activation Space Selectable KANs* (S-KAN): a learnable softmax
  selection over several candidate bases for every input feature.

Deviation: Wav-KAN gives every edge (input, output pair) its own translation and scale.
Here centres and scales belong to the input feature and are shared by the outputs, so the
wavelet basis fits the same contract (and the one-convolution KAN convolution); the
per-edge mixing weights remain.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "BASES",
    "BSplineBasis",
    "ChebyshevBasis",
    "GramBasis",
    "GroupRationalBasis",
    "HermiteBasis",
    "JacobiBasis",
    "KANBasis",
    "LegendreBasis",
    "MexicanHatBasis",
    "MorletBasis",
    "RBFBasis",
    "RSWAFBasis",
    "SelectableBasis",
    "create_basis",
    "register_basis",
]


class KANBasis(nn.Module):
    """Base class: ``forward(x: (..., in)) -> (..., in, n_basis)``.

    ``init_std`` is the standard deviation a KAN layer gives its mixing weights when
    its ``in * n_basis`` features feed one output (the layer divides by ``sqrt(in)``).

    Fused path: a basis whose ``fused`` is true computes its features for rows
    ``x: (M, in)`` in ``_fused_forward(x, params, need_grad)``, which returns the
    contiguous features ``(M, in, n_basis)`` and the tensors its backward needs, and
    differentiates them by hand in ``_fused_backward(grad, saved, need_x, need_params,
    owned)`` (``grad``: contiguous ``(M, in, n_basis)``, which may be overwritten when
    ``owned``), returning the gradient of ``x`` and of each tensor of
    ``_fused_params(dtype)``. ``KANLinear`` runs it inside its own autograd function,
    together with the matrix multiply, so the features are computed into one buffer and
    the feature gradient is reused in place.

    Basis-major variant: a basis with ``k_major`` true also takes ``out``, a contiguous
    ``(n_basis, M, in)`` buffer to fill (every basis function one contiguous slab), and
    then gets its gradient in that layout (``_fused_backward(..., k_major=True)``).
    A basis whose ``constant_index`` is not None takes ``fill_constant=False`` to leave
    that slot unwritten, and ignores the gradient in it.
    """

    in_features: int
    n_basis: int
    init_std: float = 0.1
    # the fused path also writes basis-major features into a given buffer (see below)
    k_major: bool = False
    # a k_major basis whose (M, in, K) fused features cost less extra than re-laying out
    # a contiguous weight (and its gradient): a layer with such a weight then uses them
    k_minor_ok: bool = False

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__} was built for in_features={self.in_features}, "
                f"got input with last dimension {x.shape[-1]} (shape {tuple(x.shape)})"
            )

    @property
    def fused(self) -> bool:
        return False

    @property
    def constant_index(self) -> int | None:
        """The index of a basis function that is identically 1, if there is one.

        Its fused forward then takes ``fill_constant=False`` to leave that slot unwritten:
        ``KANLinear`` puts its base feature there and adds the constant's contribution
        as a per-output shift instead of a matrix column.
        """
        return None

    def _fused_params(self, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        return ()

    def _fused_forward(
        self, x: torch.Tensor, params: tuple[torch.Tensor, ...], need_grad: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        raise NotImplementedError

    def _fused_backward(
        self,
        grad: torch.Tensor,
        saved: tuple[torch.Tensor, ...],
        need_x: bool,
        need_params: tuple[bool, ...],
        owned: bool,
    ) -> tuple[torch.Tensor | None, ...]:
        raise NotImplementedError

    def _fused_apply(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` through the fused path: ``(..., in) -> (..., in, n_basis)``."""
        params = self._fused_params(x.dtype)
        x2 = x.reshape(-1, self.in_features)
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
            feats = _FusedBasisFunction.apply(x2, self, *params)
        else:
            feats = self._fused_forward(x2, params, False)[0]
        return feats.view(*x.shape, self.n_basis)


class _FusedBasisFunction(torch.autograd.Function):
    """A basis's fused features as an autograd function of ``x`` and its parameters."""

    @staticmethod
    def forward(ctx, x, basis, *params):  # type: ignore[override]
        feats, saved = basis._fused_forward(x, params, True)
        ctx.basis = basis
        ctx.save_for_backward(*saved)
        return feats

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        g = grad.contiguous()
        grads = ctx.basis._fused_backward(
            g, ctx.saved_tensors, ctx.needs_input_grad[0], ctx.needs_input_grad[2:], g is not grad
        )
        return (grads[0], None, *grads[1:])


_SCRATCH = threading.local()
SCRATCH_BYTES = 64 * 2**20  # what the scratch buffers of one thread may keep in all


def _scratch(tag: str, like: torch.Tensor) -> torch.Tensor:
    """A buffer shaped like ``like`` for a temporary that lives inside one fused forward or
    backward call (never saved or returned), kept per thread between calls.

    On CPU, fresh large temporaries are page-faulted anew whenever the allocator has
    returned their memory to the system; reusing one buffer per role avoids that. The
    buffers one thread keeps stay within :data:`SCRATCH_BYTES` (least recently used
    dropped first; a larger temporary is a plain new buffer). Other devices have caching
    allocators: there it is a plain new buffer too.
    """
    nbytes = like.numel() * like.element_size()
    if like.device.type != "cpu" or nbytes > SCRATCH_BYTES:
        return torch.empty(like.shape, dtype=like.dtype, device=like.device)
    key = (tag, tuple(like.shape), like.dtype, like.device)
    bufs = _SCRATCH.__dict__.setdefault("bufs", {})
    buf = bufs.pop(key, None)
    if buf is None:
        buf = torch.empty(like.shape, dtype=like.dtype, device=like.device)
        kept = sum(b.numel() * b.element_size() for b in bufs.values())
        while bufs and kept + nbytes > SCRATCH_BYTES:  # least recently used first
            old = bufs.pop(next(iter(bufs)))
            kept -= old.numel() * old.element_size()
    bufs[key] = buf  # most recently used last
    return buf


def _row_sums(h: torch.Tensor) -> torch.Tensor:
    """(M, in, K) -> (M, in): the sum over the last axis, as one matrix-vector product
    (faster than a reduction over a short contiguous axis)."""
    k = h.shape[-1]
    return torch.mv(h.view(-1, k), h.new_ones(k)).view(h.shape[:-1])


BASES: dict[str, Callable[..., KANBasis]] = {}


def register_basis(name: str) -> Callable[[type[KANBasis]], type[KANBasis]]:
    def deco(cls: type[KANBasis]) -> type[KANBasis]:
        if name in BASES:
            raise ValueError(f"basis {name!r} is registered twice")
        BASES[name] = cls
        return cls

    return deco


def create_basis(name: str | KANBasis, in_features: int, **opts: Any) -> KANBasis:
    """Build a basis by name (one of ``BASES``) for ``in_features`` inputs."""
    if isinstance(name, KANBasis):
        if name.in_features != in_features:
            raise ValueError(
                f"basis was built for {name.in_features} inputs, the layer has {in_features}"
            )
        return name
    if name not in BASES:
        raise ValueError(f"unknown KAN basis {name!r}; choose one of {sorted(BASES)}")
    return BASES[name](in_features, **opts)


def _check_positive(**values: int) -> None:
    for key, v in values.items():
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{key} must be a positive integer, got {v!r}")


# ----- B-splines (KAN) ------------------------------------------------------------------


def _cox_de_boor(x: torch.Tensor, grid: torch.Tensor, order: int) -> list[torch.Tensor]:
    """Bases of order 0..``order`` (only the last two are kept): the Cox-de Boor recursion."""
    xe = x.unsqueeze(-1)
    # order 0: indicator of the half-open knot interval [t_j, t_{j+1})
    b = ((xe >= grid[:, :-1]) & (xe < grid[:, 1:])).to(x.dtype)
    prev = b
    for p in range(1, order + 1):
        left = (xe - grid[:, : -(p + 1)]) / (grid[:, p:-1] - grid[:, : -(p + 1)])
        right = (grid[:, p + 1 :] - xe) / (grid[:, p + 1 :] - grid[:, 1:-p])
        prev, b = b, left * b[..., :-1] + right * b[..., 1:]
    return [prev, b]


class _BSplineFunction(torch.autograd.Function):
    """B-spline features with an analytic backward.

    The forward keeps only the order ``k - 1`` bases; the derivative is
    dB_{j,k}/dx = k (B_{j,k-1} / (t_{j+k} - t_j) - B_{j+1,k-1} / (t_{j+k+1} - t_{j+1})),
    so the recursion's intermediates never enter the autograd graph.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, grid: torch.Tensor, order: int) -> torch.Tensor:  # type: ignore[override]
        prev, b = _cox_de_boor(x, grid, order)
        ctx.order = order
        ctx.save_for_backward(prev if order > 0 else b.new_empty(0), grid)
        return b

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        prev, grid = ctx.saved_tensors
        k = ctx.order
        if k == 0 or not ctx.needs_input_grad[0]:
            return None, None, None
        left = prev[..., :-1] / (grid[:, k:-1] - grid[:, : -(k + 1)])
        right = prev[..., 1:] / (grid[:, k + 1 :] - grid[:, 1:-k])
        return k * (grad * (left - right)).sum(-1), None, None


def _local_recursion(t: torch.Tensor, order: int) -> list[torch.Tensor]:
    """The ``order + 1`` non-zero cardinal B-splines at local coordinate ``t`` in [0, 1)."""
    c: list[torch.Tensor] = [torch.ones_like(t)]
    for p in range(1, order + 1):
        nxt = []
        for i in range(p + 1):
            term = None
            if i > 0:  # left neighbour b_{i-1} with weight (t + p - i)
                term = c[i - 1] * (t + (p - i))
            if i < p:  # own b_i with weight (i + 1 - t)
                right = c[i] * ((i + 1) - t)
                term = right if term is None else term + right
            nxt.append(term / p)
        c = nxt
    return c


def _local_values(t: torch.Tensor, order: int) -> list[torch.Tensor]:
    if order != 3:
        return _local_recursion(t, order)
    # cubic closed form; the four values sum to one
    t2 = t * t
    t3 = t2 * t
    s = 1 - t
    c0 = s * s * s * (1 / 6)
    c1 = t3 * 0.5 - t2 + 2 / 3
    c3 = t3 * (1 / 6)
    return [c0, c1, 1 - c0 - c1 - c3, c3]


def _local_values_into(t: torch.Tensor, order: int, out: torch.Tensor) -> None:
    """``_local_values`` written into ``out[..., j]`` (the cubic closed form in place)."""
    if order != 3:
        for j, v in enumerate(_local_values(t, order)):
            out[..., j].copy_(v)
        return
    t2 = t * t
    t3 = t2 * t
    s = 1 - t
    c0 = (s * s).mul_(s).mul_(1 / 6)
    c1 = (t3 * 0.5).sub_(t2).add_(2 / 3)
    c3 = t3.mul_(1 / 6)
    out[..., 0] = c0
    out[..., 1] = c1
    torch.sub(1 - c0, c1, out=out[..., 2]).sub_(c3)
    out[..., 3] = c3


def _local_derivatives(t: torch.Tensor, order: int) -> list[torch.Tensor]:
    """d/dt of the local values: N_{i-1}^{k-1} - N_i^{k-1} (closed form for cubics)."""
    if order == 3:
        t2 = t * t
        s = 1 - t
        d0 = s * s * -0.5
        d1 = t2 * 1.5 - 2 * t
        d3 = t2 * 0.5
        return [d0, d1, -(d0 + d1 + d3), d3]
    prev = _local_recursion(t, order - 1)
    out = [-prev[0]]
    out += [prev[i - 1] - prev[i] for i in range(1, order)]
    return out + [prev[order - 1]]


def bspline_features(x: torch.Tensor, grid: torch.Tensor, order: int) -> torch.Tensor:
    """B-spline basis values by the Cox-de Boor recursion.

    ``x``: (..., in); ``grid``: (in, n_knots) extended knots, ascending per feature.
    Returns (..., in, n_knots - 1 - order). Outside the grid every basis is zero.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return _BSplineFunction.apply(x, grid, order)
    return _cox_de_boor(x, grid, order)[1]


@register_basis("bspline")
class BSplineBasis(KANBasis):
    """B-splines of order ``spline_order`` on ``grid_size`` intervals of ``grid_range``.

    The grid is a per-feature buffer extended by ``spline_order`` knots on each side, so
    ``n_basis = grid_size + spline_order``. ``update_grid`` moves the knots to sample
    quantiles (mixed with a uniform grid by ``grid_eps``, as in the KAN paper) and
    ``extend`` changes the number of intervals; a KAN layer refits its coefficients
    around either so that the function it computes is kept.
    """

    init_std = 0.1

    def __init__(
        self,
        in_features: int,
        grid_size: int = 5,
        spline_order: int = 3,
        grid_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        super().__init__()
        _check_positive(in_features=in_features, grid_size=grid_size)
        if spline_order < 0:
            raise ValueError(f"spline_order must be >= 0, got {spline_order}")
        lo, hi = float(grid_range[0]), float(grid_range[1])
        if not hi > lo:
            raise ValueError(f"grid_range must be (low, high) with low < high, got {grid_range}")
        self.in_features = in_features
        self.grid_size = grid_size
        self.spline_order = spline_order
        self.n_basis = grid_size + spline_order
        self.register_buffer("grid", self._uniform_grid(lo, hi, grid_size), persistent=True)
        # a uniform grid takes the local-evaluation fast path; update_grid makes it adaptive
        self.uniform = True

    def _uniform_grid(self, lo: float, hi: float, g: int) -> torch.Tensor:
        h = (hi - lo) / g
        k = self.spline_order
        knots = torch.arange(-k, g + k + 1, dtype=torch.float32) * h + lo
        return knots.expand(self.in_features, -1).contiguous()

    @property
    def fused(self) -> bool:
        return self.uniform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        if not self.uniform or x.device.type == "meta":
            return bspline_features(x, self.grid.to(x.dtype), self.spline_order)
        return self._fused_apply(x)

    k_major = True
    k_minor_ok = True

    def _fused_forward(self, x, params, need_grad, out=None):
        # uniform grid: only the order + 1 non-zero B-splines of each input are evaluated
        # (on x-shaped tensors, closed form for cubics) and scattered into the features:
        # the basis-major ``out`` (K, M, in), else a new (M, in, K) buffer. Either way the
        # local values and their indices are (k + 1, M, in) slabs (element-wise work on
        # contiguous memory) and go in by one scatter on the flat buffer (flat index =
        # basis * M * in + position, or position * K + basis; a scatter along an axis of
        # the 3-d buffer is much slower)
        k, n = self.spline_order, self.n_basis
        grid = self.grid.to(x.dtype)
        inv_h = 1.0 / (grid[:, k + 1] - grid[:, k])
        u = (x - grid[:, k]) * inv_h  # position in grid steps from the first inner knot
        first = torch.floor(u).clamp_(-(k + 1), n)
        t = u.sub_(first)  # local coordinate in [0, 1)
        # value j belongs to basis first + j; the (k + 1, M, in) temporaries live in
        # per-thread scratch buffers (only the index and the validity mask are kept)
        like = x.unsqueeze(0).expand(k + 1, *x.shape)
        vals = _scratch("bspline_vals", like)
        _local_values_into(t, k, vals.permute(1, 2, 0))
        ar = torch.arange(k + 1, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        pos = torch.add(first.unsqueeze(0), ar, out=_scratch("bspline_pos", like))
        inside = pos.clamp(0, n - 1)
        # a basis index that does not exist (pos < 0 or pos >= n) moves by k + 1 into range,
        # onto a basis that is zero for that input and distinct from its other indices
        # (n > k), so a plain scatter of its zeroed value is exact
        side = torch.clamp(pos, -1, n, out=_scratch("bspline_side", like)).sub_(inside)
        # 1 where basis first + j exists, else 0 (a float mask: multiplying by a bool one
        # takes a much slower mixed-type loop)
        valid = inside.eq_(pos)
        vals.mul_(valid)
        index = pos.sub_(side.mul_(k + 1)).long()
        cells = torch.arange(x.numel(), device=x.device).view(x.shape)
        if out is not None:
            index.mul_(x.numel()).add_(cells)
            feats = out.zero_()
        else:
            index.add_(cells.mul_(n))
            feats = x.new_zeros(*x.shape, n)
        feats.view(-1).scatter_(0, index.view(-1), vals.view(-1))
        return feats, ((index, valid, t, inv_h) if need_grad else ())

    def _fused_backward(self, grad, saved, need_x, need_params, owned, k_major=False):
        k = self.spline_order
        if k == 0 or not need_x:  # order-0 splines are piecewise constant
            return (None,)
        index, valid, t, inv_h = saved
        # flat indices into the (K, M, in) or (M, in, K) gradient: (k + 1, M, in) slabs
        # (index_select on the flat view: about 4x faster than a 1-d gather)
        g = grad.reshape(-1).index_select(0, index.view(-1)).view(index.shape).mul_(valid)
        g = g.permute(1, 2, 0)
        d = _local_derivatives(t, k)
        dx = g[..., 0] * d[0]
        for i in range(1, k + 1):
            dx.addcmul_(g[..., i], d[i])
        return (dx.mul_(inv_h),)

    @torch.no_grad()
    def grid_from_samples(self, x: torch.Tensor, grid_size: int, grid_eps: float) -> torch.Tensor:
        """Knots for ``grid_size`` intervals: sample quantiles blended with a uniform grid."""
        x = x.reshape(-1, self.in_features)
        xs = torch.sort(x, dim=0).values
        n = xs.shape[0]
        idx = torch.linspace(0, n - 1, grid_size + 1, device=x.device).round().long()
        adaptive = xs[idx].T  # (in, g + 1)
        lo, hi = xs[0], xs[-1]
        span = (hi - lo).clamp_min(1e-4)
        step = span / grid_size
        uniform = lo[:, None] + step[:, None] * torch.arange(grid_size + 1, device=x.device)
        inner = grid_eps * uniform + (1.0 - grid_eps) * adaptive
        k = self.spline_order
        h = (inner[:, -1:] - inner[:, :1]) / grid_size
        left = inner[:, :1] - h * torch.arange(k, 0, -1, device=x.device)
        right = inner[:, -1:] + h * torch.arange(1, k + 1, device=x.device)
        return torch.cat([left, inner, right], dim=1)

    @torch.no_grad()
    def set_grid(self, grid: torch.Tensor) -> None:
        if grid.shape[0] != self.in_features or grid.shape[1] < 2 * self.spline_order + 2:
            raise ValueError(f"grid of shape {tuple(grid.shape)} does not fit this basis")
        self.grid = grid.to(self.grid)
        self.grid_size = grid.shape[1] - 1 - 2 * self.spline_order
        self.n_basis = self.grid_size + self.spline_order
        self._refresh_uniform()

    def _refresh_uniform(self) -> None:
        if self.grid.device.type == "meta":
            return
        steps = self.grid.diff(dim=1)
        self.uniform = bool(((steps - steps[:, :1]).abs() <= 1e-5 * steps[:, :1].abs()).all())

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._refresh_uniform()  # a loaded grid may be adaptive


# ----- Gaussian RBF (FastKAN) -----------------------------------------------------------


@register_basis("rbf")
class RBFBasis(KANBasis):
    """exp(-((x - c_k) / h)^2) with ``n_basis`` centres evenly spaced on ``grid_range``."""

    init_std = 0.1

    def __init__(
        self,
        in_features: int,
        n_basis: int = 8,
        grid_range: tuple[float, float] = (-2.0, 2.0),
        width: float | None = None,
    ) -> None:
        super().__init__()
        _check_positive(in_features=in_features, n_basis=n_basis)
        lo, hi = float(grid_range[0]), float(grid_range[1])
        if not hi > lo:
            raise ValueError(f"grid_range must be (low, high) with low < high, got {grid_range}")
        self.in_features = in_features
        self.n_basis = n_basis
        self.register_buffer("centres", torch.linspace(lo, hi, n_basis), persistent=False)
        self.inv_width = 1.0 / (width or (hi - lo) / max(n_basis - 1, 1))

    @property
    def fused(self) -> bool:
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        if x.device.type == "meta":  # shapes only: the plain formula
            return self._plain(x)
        return self._fused_apply(x)

    def _plain(self, x: torch.Tensor) -> torch.Tensor:
        t = (x.unsqueeze(-1) - self.centres.to(x.dtype)) * self.inv_width
        return torch.exp(-t.square())

    k_major = True
    k_minor_ok = True

    def _offsets(self, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        """x - c_k into the basis-major ``out`` (K, M, in) or a new (M, in, K) buffer."""
        c = self.centres.to(x.dtype)
        if out is None:
            return torch.sub(x.unsqueeze(-1), c)
        return torch.sub(x.unsqueeze(0), c.view(-1, 1, 1), out=out)

    def _fused_forward(self, x, params, need_grad, out=None):
        # exp(-(x - c)^2 / h^2), every step in place on the one feature buffer
        t = self._offsets(x, out)
        f = torch.addcmul(t.new_zeros(()), t, t, value=-(self.inv_width**2), out=t).exp_()
        return f, ((x, f) if need_grad else ())

    def _fused_backward(self, grad, saved, need_x, need_params, owned, k_major=False):
        # dF_k/dx = -2 / h^2 (x - c_k) F_k, so dx = -2 / h^2 (x sum_k gF_k - sum_k gF_k c_k)
        if not need_x:
            return (None,)
        x, f = saved
        h = grad.mul_(f) if owned else grad * f
        c = self.centres.to(h.dtype)
        # both sums in one pass: (2, K) @ (K, M * in), or (2, K) @ (M * in, K)^T (much
        # faster than (M * in, K) @ (K, 2), and than two matrix-vector products)
        coef = torch.stack([torch.ones_like(c), c])
        if k_major:
            sums = coef @ h.view(self.n_basis, -1)
        else:
            sums = coef @ h.view(-1, self.n_basis).t()
        total, moment = sums[0].view_as(x), sums[1].view_as(x)
        return (torch.addcmul(moment, x, total, value=-1).mul_(2 * self.inv_width**2),)


@register_basis("rswaf")
class RSWAFBasis(RBFBasis):
    """Reflectional switch activations 1 - tanh((x - c_k) / h)^2 (FasterKAN, used by MLP-KAN).

    The fused path evaluates tanh(t) as 2 sigmoid(2 t) - 1 (the same function; sigmoid
    is the cheaper kernel on CPU).
    """

    def _plain(self, x: torch.Tensor) -> torch.Tensor:
        t = (x.unsqueeze(-1) - self.centres.to(x.dtype)) * self.inv_width
        return 1 - torch.tanh(t).square()

    def _fused_forward(self, x, params, need_grad, out=None):
        # tanh(t) = 2 sigmoid(2 t) - 1 with t = (x - c_k) / h (doubling is exact)
        # 2 t = 2 x / h - 2 c_k / h in one pass, then sigmoid and 2 s - 1 in place
        scale = 2 * self.inv_width
        c = self.centres.to(x.dtype) * scale
        xs = x * scale
        if out is None:
            tanh = torch.sub(xs.unsqueeze(-1), c)
        else:
            tanh = torch.sub(xs.unsqueeze(0), c.view(-1, 1, 1), out=torch.empty_like(out))
        tanh = torch.add(tanh.new_tensor(-1.0), tanh.sigmoid_(), alpha=2, out=tanh)
        one = tanh.new_ones(())
        if out is None:
            f = torch.addcmul(one, tanh, tanh, value=-1)  # 1 - tanh^2
        else:
            f = torch.addcmul(one, tanh, tanh, value=-1, out=out)
        return f, ((tanh, f) if need_grad else ())

    def _fused_backward(self, grad, saved, need_x, need_params, owned, k_major=False):
        # dF/dx = -2 tanh(t) F / h
        if not need_x:
            return (None,)
        tanh, f = saved
        h = grad.mul_(f) if owned else grad * f
        h = h.mul_(tanh)
        total = h.sum(0) if k_major else _row_sums(h)
        return (total.mul_(-2 * self.inv_width),)


# ----- orthogonal polynomials -----------------------------------------------------------


def _tanh(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """tanh(x) as 2 sigmoid(2x) - 1: the same function, and sigmoid is the cheaper CPU
    kernel in float32 (float64 keeps torch.tanh)."""
    if x.dtype != torch.float32 or x.device.type != "cpu":
        return torch.tanh(x, out=out) if out is not None else torch.tanh(x)
    return torch.mul(x, 2, out=out).sigmoid_().mul_(2).sub_(1)


def _poly_forward(x, coefs, n_basis: int, squash: bool, fill_constant: bool, out=None):
    """Three-term-recurrence polynomial features and t = squash(x).

    With p_0 = 1, p_1 = A_0 t + B_0 and p_{n+1} = (A_n t + B_n) p_n - C_n p_{n-1}, every
    degree is written straight into its slot of one buffer: ``(M, in, K)`` of its own, or
    the basis-major ``out`` ``(K, M, in)``. The slot of p_0 is left unwritten when
    ``fill_constant`` is false (a layer puts its base feature there). The backward
    recomputes the derivatives from t and the stored p_n.
    """
    dim = 0 if out is not None else -1
    if out is None:
        out = x.new_empty(*x.shape, n_basis)
    feats = out.narrow(dim, 0, n_basis)
    if fill_constant:
        feats.select(dim, 0).fill_(1.0)
    a0, b0, _ = coefs[0]
    p1 = feats.select(dim, 1)
    if a0 == 1.0 and b0 == 0.0 and dim == 0:  # p_1 = t: squash straight into its slab
        t = _tanh(x, out=p1) if squash else p1.copy_(x)
    elif a0 == 1.0 and b0 == 0.0:  # strided slot: squash contiguously, then copy
        t = _tanh(x) if squash else x
        p1.copy_(t)
    else:
        t = _tanh(x) if squash else x
        torch.mul(t, a0, out=p1)
        if b0:
            p1.add_(b0)
    for n in range(1, n_basis - 1):
        a, b, c = coefs[n]
        nxt, cur = feats.select(dim, n + 1), feats.select(dim, n)
        if n == 1:  # p_0 = 1: (A t + B) p_1 - C
            torch.addcmul(t.new_tensor(-c), t, cur, value=a, out=nxt)
        else:
            torch.mul(feats.select(dim, n - 1), -c, out=nxt).addcmul_(t, cur, value=a)
        if b:
            nxt.add_(cur, alpha=b)
    return feats, t


def _poly_input_grad(grad, t, feats, coefs, squash: bool, dim: int) -> torch.Tensor:
    """sum_n grad_n dp_n/dx from the differentiated recurrence on t (basis axis ``dim``).

    q_n = dp_n/dt: q_0 = 0, q_1 = A_0, q_{n+1} = A_n p_n + (A_n t + B_n) q_n - C_n q_{n-1};
    under the tanh squash the sum is multiplied once by dt/dx = 1 - t^2.
    """
    k = grad.shape[dim]
    a0, b0, _ = coefs[0]
    g1 = grad.select(dim, 1)
    s = g1 if a0 == 1.0 and k > 2 else torch.mul(g1, a0)  # s is new once k > 2
    if k > 2:
        a1, b1, _ = coefs[1]
        # q_2 = A_1 p_1 + (A_1 t + B_1) A_0 = 2 A_0 A_1 t + A_1 B_0 + A_0 B_1
        q_prev, q = None, torch.mul(t, 2.0 * a0 * a1)
        if a1 * b0 + a0 * b1:
            q.add_(a1 * b0 + a0 * b1)
        s = torch.addcmul(s, grad.select(dim, 2), q)
        for n in range(2, k - 1):
            a, b, c = coefs[n]
            # A_n (p_n + t q_n + (B_n q_n - C_n q_{n-1}) / A_n)
            nq = torch.addcmul(feats.select(dim, n), t, q)
            if b:
                nq.add_(q, alpha=b / a)
            if q_prev is None:  # q_1 = A_0
                nq.sub_(c * a0 / a)
            else:
                nq.sub_(q_prev, alpha=c / a)
            if a != 1.0:
                nq.mul_(a)
            q_prev, q = q, nq
            s.addcmul_(grad.select(dim, n + 1), q)
    if squash:
        s.mul_(torch.addcmul(t.new_ones(()), t, t, value=-1))
    return s


class _PolynomialBasis(KANBasis):
    """Degrees 0..``degree`` of a three-term recurrence on ``squash(x)``.

    ``squash="tanh"`` maps inputs into (-1, 1) as ChebyKAN and KAGN do; ``None`` uses
    ``x`` as it is (for inputs already in range, or for Hermite).
    """

    k_major = True

    def __init__(self, in_features: int, degree: int = 3, squash: str | None = "tanh") -> None:
        super().__init__()
        _check_positive(in_features=in_features)
        if not isinstance(degree, int) or degree < 0:
            raise ValueError(f"degree must be an integer >= 0, got {degree!r}")
        if squash not in (None, "tanh"):
            raise ValueError(f"squash must be 'tanh' or None, got {squash!r}")
        self.in_features = in_features
        self.degree = degree
        self.n_basis = degree + 1
        self.squash = squash
        self.init_std = 1.0 / math.sqrt(degree + 1)

    def polys(self, t: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def recurrence(self) -> list[tuple[float, float, float]] | None:
        """(A_n, B_n, C_n), n = 0 .. degree - 1, with p_1 = A_0 t + B_0 and
        p_{n+1} = (A_n t + B_n) p_n - C_n p_{n-1}; None where a coefficient is learned."""
        return None

    @property
    def fused(self) -> bool:
        return self.n_basis > 1 and self.recurrence() is not None

    @property
    def constant_index(self) -> int | None:
        return 0  # p_0 = 1

    def _fused_forward(self, x, params, need_grad, out=None, fill_constant=True):
        coefs = self.recurrence()
        squash = self.squash == "tanh"
        feats, t = _poly_forward(x, coefs, self.n_basis, squash, fill_constant, out)
        return feats, ((t, feats) if need_grad else ())

    def _fused_backward(self, grad, saved, need_x, need_params, owned, k_major=False):
        if not need_x:
            return (None,)
        t, feats = saved
        dim = 0 if k_major else -1
        return (_poly_input_grad(grad, t, feats, self.recurrence(), self.squash == "tanh", dim),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        coefs = self.recurrence()
        if coefs is not None and self.n_basis > 1 and x.device.type != "meta":
            # one preallocated output and an analytic backward (same values as ``polys``)
            return self._fused_apply(x)
        t = torch.tanh(x) if self.squash == "tanh" else x
        return torch.stack(self.polys(t), dim=-1)


@register_basis("chebyshev")
class ChebyshevBasis(_PolynomialBasis):
    """Chebyshev polynomials of the first kind: T_{n+1} = 2t T_n - T_{n-1} (ChebyKAN)."""

    def polys(self, t: torch.Tensor) -> list[torch.Tensor]:
        out = [torch.ones_like(t), t]
        for _ in range(2, self.degree + 1):
            out.append(2 * t * out[-1] - out[-2])
        return out[: self.degree + 1]

    def recurrence(self) -> list[tuple[float, float, float]]:
        return [(1.0, 0.0, 0.0)] + [(2.0, 0.0, 1.0)] * max(self.degree - 1, 0)


@register_basis("legendre")
class LegendreBasis(_PolynomialBasis):
    """Legendre polynomials: (n+1) P_{n+1} = (2n+1) t P_n - n P_{n-1} (KALN)."""

    def polys(self, t: torch.Tensor) -> list[torch.Tensor]:
        out = [torch.ones_like(t), t]
        for n in range(1, self.degree):
            out.append(((2 * n + 1) * t * out[-1] - n * out[-2]) / (n + 1))
        return out[: self.degree + 1]

    def recurrence(self) -> list[tuple[float, float, float]]:
        rest = [((2 * n + 1) / (n + 1), 0.0, n / (n + 1)) for n in range(1, self.degree)]
        return [(1.0, 0.0, 0.0)] + rest


@register_basis("gram")
class GramBasis(_PolynomialBasis):
    """Gram polynomials of ``t = squash(x)`` (KAGN), by p_{n+1} = t p_n - beta_n p_{n-1}.

    With ``learn_beta=False`` they are the monic discrete Legendre polynomials on
    ``num_points`` points in (-1, 1): beta_n = n^2 (1 - n^2/m^2) / (4 n^2 - 1), orthogonal
    on t_j = (2j + 1 - m) / m. With ``learn_beta=True`` the recurrence coefficients are
    learned as in torch-conv-kan's KAGN layers: beta_n = w_n (m + n)(m - n) n^2 (4 n^2 - 1)
    / m^2 with m = n + 1 and weights w (one per degree) drawn from N(0, ``beta_init_std``)
    (the release uses 1 / (k^d * in_channels * (degree + 1)); default
    1 / (in_features * (degree + 1))), so they start near the monomials. ``post_act="silu"``
    applies SiLU to the features, as KAGN convolutions do.
    """

    def __init__(
        self,
        in_features: int,
        degree: int = 3,
        squash: str | None = "tanh",
        num_points: int = 32,
        learn_beta: bool = False,
        post_act: str | None = None,
        beta_init_std: float | None = None,
    ) -> None:
        super().__init__(in_features, degree, squash)
        if num_points <= degree:
            raise ValueError(f"num_points ({num_points}) must exceed degree ({degree})")
        if post_act not in (None, "silu"):
            raise ValueError(f"post_act must be 'silu' or None, got {post_act!r}")
        if beta_init_std is not None and not beta_init_std > 0:
            raise ValueError(f"beta_init_std must be > 0, got {beta_init_std}")
        m = float(num_points)
        self.num_points = num_points
        self.post_act = post_act
        self.betas = [n * n * (1 - n * n / (m * m)) / (4 * n * n - 1) for n in range(degree + 1)]
        # KAGN's fixed factor of each learnable coefficient, n = 1 .. degree - 1
        self.kagn_factors = [
            (2 * n + 1) * n * n * (4 * n * n - 1) / float((n + 1) ** 2) for n in range(degree + 1)
        ]
        self.beta_weights = None
        if learn_beta and degree >= 2:  # degrees 0 and 1 use no recurrence coefficient
            std = beta_init_std or 1.0 / (in_features * (degree + 1))
            self.beta_weights = nn.Parameter(torch.randn(degree + 1) * std)

    def beta(self, n: int) -> torch.Tensor | float:
        if self.beta_weights is None:
            return self.betas[n]
        return self.kagn_factors[n] * self.beta_weights[n]

    def polys(self, t: torch.Tensor) -> list[torch.Tensor]:
        out = [torch.ones_like(t), t]
        for n in range(1, self.degree):
            out.append(t * out[-1] - self.beta(n) * out[-2])
        return out[: self.degree + 1]

    def recurrence(self) -> list[tuple[float, float, float]] | None:
        if self.beta_weights is not None:
            return None  # learned coefficients: autograd through ``polys``
        return [(1.0, 0.0, 0.0)] + [(1.0, 0.0, self.betas[n]) for n in range(1, self.degree)]

    @property
    def fused(self) -> bool:
        return self.post_act is None and super().fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = super().forward(x)
        return F.silu(feats) if self.post_act == "silu" else feats


@register_basis("hermite")
class HermiteBasis(_PolynomialBasis):
    """Probabilists' Hermite polynomials: He_{n+1} = t He_n - n He_{n-1}."""

    def polys(self, t: torch.Tensor) -> list[torch.Tensor]:
        out = [torch.ones_like(t), t]
        for n in range(1, self.degree):
            out.append(t * out[-1] - n * out[-2])
        return out[: self.degree + 1]

    def recurrence(self) -> list[tuple[float, float, float]]:
        return [(1.0, 0.0, 0.0)] + [(1.0, 0.0, float(n)) for n in range(1, self.degree)]


@register_basis("jacobi")
class JacobiBasis(_PolynomialBasis):
    """Jacobi polynomials P^(alpha, beta)_n by their three-term recurrence (JacobiKAN)."""

    def __init__(
        self,
        in_features: int,
        degree: int = 3,
        squash: str | None = "tanh",
        alpha: float = 1.0,
        beta: float = 1.0,
    ) -> None:
        super().__init__(in_features, degree, squash)
        if alpha <= -1 or beta <= -1:
            raise ValueError(f"alpha and beta must be > -1, got {alpha}, {beta}")
        self.alpha, self.beta = float(alpha), float(beta)

    def polys(self, t: torch.Tensor) -> list[torch.Tensor]:
        a, b = self.alpha, self.beta
        out = [torch.ones_like(t), 0.5 * ((a + b + 2) * t + (a - b))]
        for n in range(2, self.degree + 1):
            c = 2 * n + a + b
            a1 = 2 * n * (n + a + b) * (c - 2)
            a2 = (c - 1) * (a * a - b * b)
            a3 = (c - 2) * (c - 1) * c
            a4 = 2 * (n + a - 1) * (n + b - 1) * c
            out.append(((a2 + a3 * t) * out[-1] - a4 * out[-2]) / a1)
        return out[: self.degree + 1]

    def recurrence(self) -> list[tuple[float, float, float]]:
        a, b = self.alpha, self.beta
        coefs = [(0.5 * (a + b + 2), 0.5 * (a - b), 0.0)]
        for n in range(2, self.degree + 1):  # the step that makes p_n from p_{n-1}
            c = 2 * n + a + b
            a1 = 2 * n * (n + a + b) * (c - 2)
            a2 = (c - 1) * (a * a - b * b)
            a3 = (c - 2) * (c - 1) * c
            a4 = 2 * (n + a - 1) * (n + b - 1) * c
            coefs.append((a3 / a1, a2 / a1, a4 / a1))
        return coefs


# ----- wavelets (Wav-KAN) ---------------------------------------------------------------


class _WaveletBasis(KANBasis):
    """psi((x - c_k) / s_k) for ``n_basis`` learnable centres and scales per input feature."""

    init_std = 0.5

    def __init__(
        self,
        in_features: int,
        n_basis: int = 8,
        grid_range: tuple[float, float] = (-2.0, 2.0),
        learnable: bool = True,
    ) -> None:
        super().__init__()
        _check_positive(in_features=in_features, n_basis=n_basis)
        lo, hi = float(grid_range[0]), float(grid_range[1])
        if not hi > lo:
            raise ValueError(f"grid_range must be (low, high) with low < high, got {grid_range}")
        self.in_features = in_features
        self.n_basis = n_basis
        centres = torch.linspace(lo, hi, n_basis).expand(in_features, -1).clone()
        scale = (hi - lo) / max(n_basis - 1, 1)
        log_scale = torch.full((in_features, n_basis), math.log(scale))
        self.centres = nn.Parameter(centres, requires_grad=learnable)
        self.log_scale = nn.Parameter(log_scale, requires_grad=learnable)

    @staticmethod
    def psi(t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def dpsi(t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _psi_inplace(self, t: torch.Tensor, need_grad: bool, out: torch.Tensor | None = None):
        """(psi(t), psi'(t) or None) from a buffer t that stays unchanged: psi goes into
        ``out`` when given, everything else into new buffers."""
        raise NotImplementedError

    k_major = True
    k_minor_ok = True

    @property
    def fused(self) -> bool:
        return True

    def _fused_params(self, dtype):
        return self.centres.to(dtype), self.log_scale.to(dtype)

    def _fused_forward(self, x, params, need_grad, out=None):
        c, ls = params
        inv_s = torch.exp(-ls)
        # t = x / s - c / s in one pass (rather than (x - c), then / s)
        if out is None:
            t = x.new_empty(*x.shape, self.n_basis)
            torch.addcmul(-(c * inv_s), x.unsqueeze(-1), inv_s, out=t)
        else:  # basis-major (K, M, in): the (in, K) parameters broadcast as (K, 1, in)
            inv_s = inv_s.t().contiguous().unsqueeze(1)
            c = c.t().contiguous().unsqueeze(1)
            t = torch.addcmul(-(c * inv_s), x.unsqueeze(0), inv_s, out=torch.empty_like(out))
        psi, dpsi = self._psi_inplace(t, need_grad, out)
        # psi'(t) shares its costly factors with psi(t): keep it rather than recompute
        return psi, ((t, dpsi, inv_s) if need_grad else ())

    def _fused_backward(self, grad, saved, need_x, need_params, owned, k_major=False):
        # with h = grad psi'(t): dx = sum_k h / s, dc = -sum_batch h / s,
        # dlog s = -sum_batch h t
        t, dpsi, inv_s = saved
        h = grad.mul_(dpsi) if owned else grad * dpsi
        hs = h.mul_(inv_s)  # h / s
        if k_major:  # (K, M, in): sum over the basis axis 0, over the batch axis 1
            grad_x = hs.sum(0) if need_x else None
            grad_c = -hs.sum(1).t() if need_params[0] else None
            grad_ls = hs.mul_(t).sum(1).div_(-inv_s.squeeze(1)).t() if need_params[1] else None
            return grad_x, grad_c, grad_ls
        grad_x = _row_sums(hs) if need_x else None
        grad_c = -hs.sum(0) if need_params[0] else None
        grad_ls = hs.mul_(t).sum(0).div_(-inv_s) if need_params[1] else None
        return grad_x, grad_c, grad_ls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        if x.device.type == "meta":  # shapes only: the plain formula
            c, ls = self.centres.to(x.dtype), self.log_scale.to(x.dtype)
            return self.psi((x.unsqueeze(-1) - c) * torch.exp(-ls))
        return self._fused_apply(x)


@register_basis("mexican_hat")
class MexicanHatBasis(_WaveletBasis):
    """Mexican hat (Ricker) wavelet: 2 / (sqrt(3) pi^(1/4)) (1 - t^2) exp(-t^2 / 2)."""

    @staticmethod
    def psi(t: torch.Tensor) -> torch.Tensor:
        c = 2.0 / (math.sqrt(3.0) * math.pi**0.25)
        t2 = t.square()
        return c * (1 - t2) * torch.exp(-0.5 * t2)

    @staticmethod
    def dpsi(t: torch.Tensor) -> torch.Tensor:
        c = 2.0 / (math.sqrt(3.0) * math.pi**0.25)
        t2 = t.square()
        return c * t * (t2 - 3) * torch.exp(-0.5 * t2)

    def _psi_inplace(self, t, need_grad, out=None):
        c = 2.0 / (math.sqrt(3.0) * math.pi**0.25)
        if not need_grad:  # (1 - t^2) C exp(-t^2 / 2), C exp(...) as exp(log C - t^2 / 2)
            ce = torch.addcmul(t.new_tensor(math.log(c)), t, t, value=-0.5, out=out).exp_()
            return ce.mul_(torch.addcmul(t.new_ones(()), t, t, value=-1)), None
        # e2 = 2 C exp(-t^2 / 2) (in the output buffer) and b = (3 - t^2) / 2 e2
        # = -(t^2 - 3) C exp(-t^2 / 2); then psi = b - e2 and psi' = -b t
        e2 = torch.addcmul(t.new_tensor(math.log(2 * c)), t, t, value=-0.5, out=out).exp_()
        b = torch.addcmul(t.new_tensor(1.5), t, t, value=-0.5).mul_(e2)
        psi = torch.sub(b, e2, out=e2)
        return psi, torch.addcmul(t.new_zeros(()), b, t, value=-1, out=b)


@register_basis("morlet")
class MorletBasis(_WaveletBasis):
    """Real Morlet wavelet: cos(omega0 t) exp(-t^2 / 2), omega0 = 5."""

    omega0 = 5.0

    @staticmethod
    def psi(t: torch.Tensor) -> torch.Tensor:
        return torch.cos(MorletBasis.omega0 * t) * torch.exp(-0.5 * t.square())

    @staticmethod
    def dpsi(t: torch.Tensor) -> torch.Tensor:
        w = MorletBasis.omega0
        wt = w * t
        return -(w * torch.sin(wt) + t * torch.cos(wt)) * torch.exp(-0.5 * t.square())

    def _psi_inplace(self, t, need_grad, out=None):
        # exp(-t^2 / 2) in a per-thread scratch buffer (it lives only in this call)
        zero = t.new_zeros(())
        e = torch.addcmul(zero, t, t, value=-0.5, out=_scratch("morlet_e", t)).exp_()
        wt = t * self.omega0
        psi = (torch.cos(wt) if out is None else torch.cos(wt, out=out)).mul_(e)
        if not need_grad:
            return psi, None
        # -(omega0 sin(omega0 t) + t cos(omega0 t)) exp(-t^2 / 2)
        dpsi = torch.addcmul(zero, wt.sin_(), e, value=-self.omega0, out=wt)
        return psi, dpsi.addcmul_(t, psi, value=-1)


def _horner(x: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """sum_i coef[:, i] x^i for grouped x (..., G, D) and coef (G or 1, n)."""
    out = coef[:, -1:].expand_as(x)
    for i in range(coef.shape[1] - 2, -1, -1):
        out = torch.addcmul(coef[:, i : i + 1], out, x)
    return out


def _horner_into(x: torch.Tensor, coef: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``_horner`` with every step written into ``out`` (one buffer, no temporaries)."""
    n = coef.shape[1]
    if n == 1:
        return out.copy_(coef.expand_as(x))
    # c_{n-1} x + c_{n-2} as mul then add_: an addcmul with two broadcast coefficient
    # operands runs an unvectorised loop (several times slower)
    torch.mul(x, coef[:, n - 1 :], out=out).add_(coef[:, n - 2 : n - 1])
    for i in range(n - 3, -1, -1):
        torch.addcmul(coef[:, i : i + 1], out, x, out=out)
    return out


def _rational_forward(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """F = P(x) / D(x) with P(x) = sum_i a_i x^i and D(x) = 1 + sum_j |b_j| |x|^j (j >= 1)."""
    p = _horner(x, a)
    ax = x.abs()
    d = 1 + _horner(ax, b.abs()) * ax
    return p / d, p, d


class _RationalFunction(torch.autograd.Function):
    """P(x) / (1 + sum_j |b_j| |x|^j) per group with an analytic backward (KAT's kernel).

    The forward keeps x, P(x) and D(x); the backward gives
    dF/dx = (P' D - P D') / D^2 with D' = sign(x) sum_j j |b_j| |x|^(j-1),
    dF/da_i = x^i / D and dF/db_j = -P sign(b_j) |x|^j / D^2, each coefficient's gradient
    reduced over the elements that share it (all groups for the shared numerator).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out, p, d = _rational_forward(x, a, b)
        ctx.save_for_backward(x, a, b, p, d)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, a, b, p, d = ctx.saved_tensors
        inv = 1 / d
        u = -grad * p * inv * inv  # the common factor of the denominator terms
        t = grad * inv
        ax = x.abs()
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            ia = torch.arange(1, a.shape[1], dtype=a.dtype, device=a.device)
            ib = torch.arange(1, b.shape[1] + 1, dtype=b.dtype, device=b.device)
            dp = _horner(x, a[:, 1:] * ia) if a.shape[1] > 1 else torch.zeros_like(x)
            dd = _horner(ax, b.abs() * ib) * torch.sign(x)
            grad_x = t * dp + u * dd
        group_dims = [dim for dim in range(x.ndim) if dim != x.ndim - 2]
        if ctx.needs_input_grad[1]:
            # a shared numerator (one row) reduces over every group as well
            dims = list(range(x.ndim)) if a.shape[0] == 1 else group_dims
            cols, xp = [], None
            for _ in range(a.shape[1]):
                xp = torch.ones_like(x) if xp is None else xp * x
                cols.append((t * xp).sum(dims))
            grad_a = torch.stack(cols, -1).reshape(a.shape)
        if ctx.needs_input_grad[2]:
            cols, xp = [], ax
            for j in range(b.shape[1]):
                xp = ax if j == 0 else xp * ax
                cols.append((u * xp).sum(group_dims))
            grad_b = torch.stack(cols, -1) * torch.sign(b)
        return grad_x, grad_a, grad_b


# ----- group-rational (KAT) -------------------------------------------------------------

# Coefficients of P (degree 5, a0..a5) and of the denominator (b1..b4) as the KAT release
# ships them (its ``init.json``: ``identity``, ``gelu_old`` for GELU, which fits GELU under
# the kernel's denominator, and ``swish``), and the second moment E[F(x)^2] for
# x ~ N(0, 1) of each (computed by Gauss-Hermite quadrature). ``silu`` is ``swish``.
_SWISH = (
    (3.054879741161051e-07, 0.5000007853744493, 0.24999783422824703, 0.05326628273219478,
     0.005803034571292244, 0.0002751961022402342),
    (-4.111554955950634e-06, 0.10652899335007572, -1.2690007399796238e-06,
     0.0005502331264140556),
    0.355775,
)  # fmt: skip
RATIONAL_INITS: dict[str, tuple[tuple[float, ...], tuple[float, ...], float]] = {
    "identity": ((0.0, 1.0, 0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0), 1.0),
    "gelu": (
        (
            -0.0012423594497499122,
            0.5080497063245629,
            0.41586363182937475,
            0.13022718688035761,
            0.024355900098993424,
            0.00290283948155535,
        ),
        (-0.06675015696494944, 0.17927646217001553, 0.03746682605496631, 1.6561610853276082e-10),
        0.425240,
    ),  # fmt: skip
    "swish": _SWISH,
    "silu": _SWISH,
}


@register_basis("rational")
class GroupRationalBasis(KANBasis):
    """KAT's group-rational function F_g(x) = P(x) / (1 + sum_j |b_{g,j}| |x|^j).

    The ``in_features`` inputs are split into ``num_groups`` contiguous groups. As in the
    release (``KAT_Group`` and its kernel), the numerator P (degree 5, ``numerator`` of
    shape 1 x 6) is shared by all groups and each group has its own denominator
    coefficients b_1..b_4 (``denominator``, num_groups x 4), which enter by absolute value
    on |x|^j, so the denominator is at least 1. ``n_basis`` is 1: the layer that follows
    is a plain linear map of F(x), which is exactly KAT's GR-KAN. ``init`` names the
    function the rational starts as; ``second_moment`` is E[F(x)^2] at x ~ N(0, 1), which a
    layer uses for the variance-preserving initialisation Var[W] = 1 / (fan_in E[F(x)^2]).
    """

    n_basis = 1

    def __init__(self, in_features: int, num_groups: int = 8, init: str = "swish") -> None:
        super().__init__()
        _check_positive(in_features=in_features, num_groups=num_groups)
        if in_features % num_groups:
            raise ValueError(
                f"in_features ({in_features}) must be divisible by num_groups ({num_groups})"
            )
        if init not in RATIONAL_INITS:
            raise ValueError(
                f"unknown rational init {init!r}; choose one of {sorted(RATIONAL_INITS)}"
            )
        self.in_features = in_features
        self.num_groups = num_groups
        self.init = init
        a, b, m2 = RATIONAL_INITS[init]
        self.numerator = nn.Parameter(torch.tensor(a).unsqueeze(0))
        self.denominator = nn.Parameter(torch.tensor(b).repeat(num_groups, 1))
        self.second_moment = m2
        self.init_std = 1.0 / math.sqrt(m2)

    k_major = True
    k_minor_ok = True

    @property
    def fused(self) -> bool:
        return self.numerator.shape[0] == 1  # one numerator shared by all groups

    def _fused_params(self, dtype):
        return self.numerator.to(dtype), self.denominator.to(dtype)

    def _fused_forward(self, x, params, need_grad, out=None):
        # F = P(x) / D(x), written into ``out`` (1, M, in) or a new (M, in, 1) buffer; every
        # step in place on as few (M, in) buffers as possible (they dominate the cost)
        a, b = params
        # only D and F are kept (|x| is recomputed in the backward, P is not needed there);
        # |x| and P go into per-thread scratch buffers
        xg = x.reshape(x.shape[0], self.num_groups, -1)
        ax = torch.abs(xg, out=_scratch("rational_ax", xg))
        p = _horner_into(xg, a, _scratch("rational_p", xg))
        d = _horner_into(ax, b.abs(), torch.empty_like(xg))
        d = torch.addcmul(ax.new_ones(()), d, ax, out=d)  # 1 + |x| H(|x|)
        f = torch.div(p, d, out=None if out is None else out.view_as(p))
        f = f.view(*x.shape, 1) if out is None else out
        return f, ((xg, d, f, a, b) if need_grad else ())

    def _fused_backward(self, grad, saved, need_x, need_params, owned, k_major=False):
        # as _RationalFunction: dF/dP = 1 / D, dF/dD = -P / D^2, D' = sign(x) sum_j j |b_j|
        # |x|^(j-1); coefficient gradients reduced over the elements sharing them
        xg, d, f, a, b = saved
        ax = torch.abs(xg, out=_scratch("rational_ax", xg))
        t = torch.div(grad.reshape(xg.shape), d, out=_scratch("rational_t", xg))  # grad / D
        # -grad P / D^2
        u = torch.mul(t, f.reshape(xg.shape), out=_scratch("rational_u", xg)).neg_()
        grad_x = grad_a = grad_b = None
        work = _scratch("rational_work", xg)
        if need_x:
            ia = torch.arange(1, a.shape[1], dtype=a.dtype, device=a.device)
            ib = torch.arange(1, b.shape[1] + 1, dtype=b.dtype, device=b.device)
            if a.shape[1] > 1:
                grad_x = _horner_into(xg, a[:, 1:] * ia, torch.empty_like(xg)).mul_(t)
            else:
                grad_x = torch.zeros_like(xg)
            sign = torch.sign(xg, out=_scratch("rational_sign", xg))
            dd = _horner_into(ax, b.abs() * ib, work).mul_(sign)
            grad_x = grad_x.addcmul_(u, dd).view(xg.shape[0], -1)
        if need_params[0]:  # the shared numerator: sums over every element
            tf, cols = t.reshape(-1), [t.sum()]
            if a.shape[1] > 1:
                xp = work.copy_(xg).view(-1)
                xf = xg.reshape(-1)
                for i in range(1, a.shape[1]):
                    cols.append(torch.dot(tf, xp))
                    if i + 1 < a.shape[1]:
                        xp.mul_(xf)
            grad_a = torch.stack(cols).view(a.shape)
        if need_params[1]:  # one denominator per group: sums over batch and group members
            v, cols = u, []
            for j in range(b.shape[1]):
                v = torch.mul(u, ax, out=work) if j == 0 else v.mul_(ax)  # -grad P|x|^j/D^2
                cols.append(v.sum((0, 2)))
            grad_b = torch.stack(cols, -1) * torch.sign(b)
        return grad_x, grad_a, grad_b

    def rational(self, x: torch.Tensor) -> torch.Tensor:
        """F applied elementwise: (..., in) -> (..., in)."""
        self._check(x)
        shape = x.shape
        xg = x.reshape(*shape[:-1], self.num_groups, self.in_features // self.num_groups)
        a = self.numerator.to(x.dtype)
        b = self.denominator.to(x.dtype)
        if torch.is_grad_enabled() and (x.requires_grad or a.requires_grad or b.requires_grad):
            return _RationalFunction.apply(xg, a, b).reshape(shape)
        return _rational_forward(xg, a, b)[0].reshape(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rational(x).unsqueeze(-1)


# ----- selectable activation space (S-KAN) ----------------------------------------------


@register_basis("selectable")
class SelectableBasis(KANBasis):
    """S-KAN: every input feature selects among candidate bases (*Activation Space
    Selectable Kolmogorov-Arnold Networks*).

    Search phase: features are the candidates' features concatenated along the basis axis,
    each block scaled by its learnable softmax selection weight (``n_basis = sum of the
    candidates' n_basis``). Selection phase (``archbench.layers.kan.select_activations``,
    which calls ``select_`` and folds each kept weight into the layer): every input keeps
    only the candidate it weighs most and the others are pruned, their features set to zero
    and no longer computed when no input keeps them; the selection is stored in the
    ``selection`` buffer (-1 while searching) and the logits are frozen.
    ``candidates`` lists basis names or ``(name, options)`` pairs; ``selected()`` gives the
    index of the candidate each input feature weighs most (or keeps, once selected).
    """

    def __init__(
        self,
        in_features: int,
        candidates: Sequence[str | tuple[str, dict[str, Any]]] = (
            "bspline",
            "chebyshev",
            "rbf",
            "mexican_hat",
        ),
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        _check_positive(in_features=in_features)
        if len(candidates) < 2:
            raise ValueError("a selectable basis needs at least two candidate bases")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        bases = []
        for c in candidates:
            name, opts = (c, {}) if isinstance(c, str) else c
            if name == "selectable":
                raise ValueError("a selectable basis cannot contain another selectable basis")
            bases.append(create_basis(name, in_features, **opts))
        self.in_features = in_features
        self.candidates = nn.ModuleList(bases)
        self.n_basis = sum(b.n_basis for b in bases)
        self.temperature = float(temperature)
        self.logits = nn.Parameter(torch.zeros(in_features, len(bases)))
        self.register_buffer("selection", torch.full((in_features,), -1, dtype=torch.long))
        self.init_std = max(b.init_std for b in bases) * math.sqrt(len(bases))

    @property
    def is_selected(self) -> bool:
        return bool((self.selection >= 0).all())

    def block_slices(self) -> list[slice]:
        """The basis-axis slice of each candidate's features."""
        out, start = [], 0
        for b in self.candidates:
            out.append(slice(start, start + b.n_basis))
            start += b.n_basis
        return out

    def weights(self) -> torch.Tensor:
        """(in, candidates): softmax selection weights, or the one-hot selection once made."""
        if self.is_selected:
            return F.one_hot(self.selection, len(self.candidates)).to(self.logits.dtype)
        return torch.softmax(self.logits / self.temperature, dim=-1)

    def selected(self) -> torch.Tensor:
        return self.selection.clone() if self.is_selected else self.logits.argmax(dim=-1)

    @torch.no_grad()
    def select_(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep each input's highest-weighted candidate; returns (selection, its weight at
        selection time). The caller folds that weight into the layer's coefficients."""
        w = self.weights()
        sel = w.argmax(dim=-1)
        kept = w.gather(1, sel[:, None]).squeeze(1)
        self.selection.copy_(sel)
        self.logits.requires_grad_(False)
        return sel, kept

    # ----- fused path: every candidate fused; features basis-major ---------------------
    k_major = True
    k_minor_ok = True

    @property
    def fused(self) -> bool:
        return all(b.fused for b in self.candidates)

    def _fused_params(self, dtype):
        out = [self.logits.to(dtype)]
        for b in self.candidates:
            out += b._fused_params(dtype)
        return tuple(out)

    def _split_params(self, params):
        chunks, i = [], 1
        for b in self.candidates:
            n = len(b._fused_params(params[0].dtype))
            chunks.append(tuple(params[i : i + n]))
            i += n
        return params[0], chunks

    def _kept(self, j: int) -> bool:
        return not self.is_selected or bool((self.selection == j).any())

    def _fused_forward(self, x, params, need_grad, out=None):
        # each candidate's features F_j (K_j, M, in) scaled by its selection weight w[:, j]
        # into its block of the buffer; F_j itself is kept for the backward
        logits, chunks = self._split_params(params)
        if self.is_selected:
            w = F.one_hot(self.selection, len(self.candidates)).to(x.dtype)
        else:
            w = torch.softmax(logits / self.temperature, dim=-1)
        if out is None:  # (M, in, K): each candidate's block a slice of the last axis
            buf = x.new_empty(*x.shape, self.n_basis)
        else:
            buf = out
        saved: list[torch.Tensor] = [w]
        counts = []
        for j, (b, sl) in enumerate(zip(self.candidates, self.block_slices())):
            if not self._kept(j):  # pruned everywhere: zero features, nothing to compute
                (buf[..., sl] if out is None else buf[sl]).zero_()
                counts.append(0)
                continue
            if out is None:  # the candidate's own (M, in, K_j) features, kept for backward
                f, sv = b._fused_forward(x, chunks[j], need_grad)
                torch.mul(f, w[:, j : j + 1], out=buf[..., sl])
            elif b.k_major:
                f = x.new_empty(b.n_basis, *x.shape)
                _, sv = b._fused_forward(x, chunks[j], need_grad, out=f)
            else:
                f, sv = b._fused_forward(x, chunks[j], need_grad)
                f = f.permute(2, 0, 1)  # (K_j, M, in) view of its (M, in, K_j) features
            if out is not None:
                torch.mul(f, w[:, j], out=buf[sl])
            saved += [f, *sv]
            counts.append(1 + len(sv))
        if not need_grad:
            return buf, ()
        return buf, (*saved, torch.tensor(counts))

    def _fused_backward(self, grad, saved, need_x, need_params, owned, k_major=False):
        # k_major: grad and the kept F_j are (K, M, in); else (M, in, K) and (M, in, K_j)
        w, *rest = saved[:-1]
        counts = saved[-1].tolist()
        n_cand = len(self.candidates)
        sums = w.new_zeros(w.shape) if need_params[0] else None  # sum_{k, m} grad F_jk
        grad_x = None
        param_grads: list[torch.Tensor | None] = []
        pos, flag = 0, 1
        for j, (b, sl) in enumerate(zip(self.candidates, self.block_slices())):
            n_p = len(b._fused_params(w.dtype))
            need_p = tuple(need_params[flag : flag + n_p])
            flag += n_p
            if counts[j] == 0:
                param_grads += [None] * n_p
                continue
            f, sv = rest[pos], tuple(rest[pos + 1 : pos + counts[j]])
            pos += counts[j]
            if not k_major:  # the block's gradient, scaled into a contiguous copy
                g = grad[..., sl]
                if sums is not None:
                    sums[:, j] = (g * f).sum((0, 2))
                g = torch.mul(g, w[:, j : j + 1])
                gr = b._fused_backward(g, sv, need_x, need_p, True)
                if need_x and gr[0] is not None:
                    grad_x = gr[0] if grad_x is None else grad_x.add_(gr[0])
                param_grads += list(gr[1:]) if n_p else []
                continue
            g = grad[sl]
            if sums is not None:
                sums[:, j] = (g * f).sum((0, 1))
            g = g.mul_(w[:, j]) if owned else g * w[:, j]
            if b.k_major:
                gr = b._fused_backward(g, sv, need_x, need_p, True, True)
            else:
                gr = b._fused_backward(g.permute(1, 2, 0), sv, need_x, need_p, True)
            if need_x and gr[0] is not None:
                grad_x = gr[0] if grad_x is None else grad_x.add_(gr[0])
            param_grads += list(gr[1:]) if n_p else []
        if need_x and grad_x is None:  # no candidate depends on x (all pruned)
            grad_x = grad.new_zeros(grad.shape[1:] if k_major else grad.shape[:-1])
        grad_logits = None
        if sums is not None and n_cand:  # softmax backward, then the temperature
            grad_logits = w * (sums - (w * sums).sum(-1, keepdim=True)) / self.temperature
        return (grad_x, grad_logits, *param_grads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        w = self.weights().to(x.dtype)
        feats = []
        for j, (b, sl) in enumerate(zip(self.candidates, self.block_slices())):
            if self.is_selected and not bool((self.selection == j).any()):
                # pruned everywhere: no need to evaluate this candidate
                feats.append(x.new_zeros(*x.shape, sl.stop - sl.start))
            else:
                feats.append(b(x) * w[:, j : j + 1])
        return torch.cat(feats, dim=-1)
