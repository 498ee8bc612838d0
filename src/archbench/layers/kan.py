"""Kolmogorov-Arnold layers: ``KANLinear``, ``KANConv1d/2d/3d``, bottleneck KAN convolution.

Every layer takes a basis from :mod:`archbench.layers.kan_basis` by name (``basis=``)
plus that basis's options, and computes, for each output ``o``,
``y_o = sum_i phi_oi(x_i)`` with ``phi_oi(x) = w_b[o, i] * b(x) + sum_k W[o, i, k] B_k(x)``
(*KAN: Kolmogorov-Arnold Networks*, Liu et al., 2024; ``b`` is the residual base
function, SiLU by default, none for the KAT rational basis).

Speed: a layer is one basis evaluation plus matrix multiplies (linear) or one ordinary
convolution (convolutional), with the base branch as a second, small matmul/convolution
(mathematically the base function is one more basis feature; ``full_weight`` and
``pixel_features`` give that single-tensor view). ``KANLinear`` with a basis-major basis
(every fused one: B-splines on a uniform grid, polynomials, RBF, RSWAF, wavelets,
rational, selectable) runs features, products and base branch in one autograd function,
the products over basis-major copies of the weight, with a constant basis function kept
out of the products (see ``_KANLinearFunction``); ``basis_major_weight=True`` stores the
``(out, in, K)`` weight basis-major (strides ``(in, 1, out * in)``; the state dict holds
it contiguous) so that no copy is needed. With the default contiguous weight, a basis
with ``k_minor_ok`` (all but the polynomials) runs ``(M, in, K)`` features and one
product on the weight as stored instead (no copy either).
A KAN convolution applies the KAN to every patch; because
each edge function depends on one input pixel only, the features of every input pixel
are computed once, ``(B, C * (K + 1), H, W)``, and convolved with weights
``(out, C * (K + 1) / groups, k, k)`` -- equal to the KAN on every unfolded patch of the
padded input, without materialising the unfold (the input is padded before the basis
is applied, so padded pixels contribute ``phi(0)`` exactly as in the unfold form).

``BottleneckKANConv2d`` is the parameter-efficient layer of *Kolmogorov-Arnold
Convolutions: Design Principles and Empirical Studies* (Drokin, 2024): a 1x1 projection
down to ``max(in, out) / reduction`` channels, a KAN convolution there, a 1x1
projection up, plus a full base convolution of SiLU(x), then norm and SiLU.

``kan_regularization`` gives the KAN paper's L1 and entropy penalties on the mean
absolute edge activations recorded by layers built with ``track_activations=True``.
Deviation: the original KAN also multiplies every spline by a learnable per-edge scale;
that scale is folded into the spline coefficients here (it adds no expressiveness).
"""

from __future__ import annotations

import math
import threading
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .kan_basis import BSplineBasis, GroupRationalBasis, KANBasis, create_basis

__all__ = [
    "BottleneckKANConv1d",
    "BottleneckKANConv2d",
    "BottleneckKANConv3d",
    "KANConv1d",
    "KANConv2d",
    "KANConv3d",
    "KANLinear",
    "kan_regularization",
    "select_activations",
    "unfold_kan_conv2d",
]

_BASE_ACTS = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu, "identity": lambda t: t}


def _base_act(name: str | None, basis: KANBasis):
    if name == "auto":
        name = None if isinstance(basis, GroupRationalBasis) else "silu"
    if name is None:
        return None, None
    if name not in _BASE_ACTS:
        raise ValueError(
            f"unknown base_act {name!r}; choose one of {sorted(_BASE_ACTS)}, 'auto' or None"
        )
    return name, _BASE_ACTS[name]


def _features(basis: KANBasis, act, x: torch.Tensor) -> torch.Tensor:
    """Basis features with the base function appended: (..., in) -> (..., in, K [+ 1])."""
    feats = basis(x)
    if act is not None:
        feats = torch.cat([feats, act(x).unsqueeze(-1)], dim=-1)
    return feats


class _KANLinearFunction(torch.autograd.Function):
    """``features(x) @ W^T`` (plus a SiLU base branch) for a basis with a fused path.

    ``apply(x, weight, base_weight, basis, *params)`` with ``x: (M, in)``; ``base_weight``
    is None when there is no base branch (or the caller adds it).

    A ``k_major`` basis writes its features basis-major into one ``(K, M, in)`` buffer
    (every basis function a contiguous ``(M, in)`` slab, so the element-wise work runs on
    contiguous memory), and the layer keeps its weight ``(out, in, K)`` stored
    basis-major as well (strides ``(in, 1, out * in)``: ``K`` contiguous ``(out, in)``
    blocks). The layer is then a sum of ``K`` matrix multiplies of the shapes of an
    ordinary linear layer, read in place; backward runs them batched (much faster than
    one long ``(M, out) @ (out, K * in)`` product). A constant basis function in slot 0
    (``basis.constant_index``, p_0 = 1 of the polynomials) stays out of the products:
    its contribution ``sum_i W[o, i, 0]`` is a per-output shift and its weight gradient
    the batch sum of the output gradient, the same for every input. The SiLU base branch
    is one more product accumulated into the output.

    Other bases, and ``k_minor_ok`` ones with a weight not stored basis-major (see
    ``_k_major_call``), use their ``(M, in, K)`` features and one matrix multiply. The feature
    gradient goes into a reused workspace that the basis's backward may overwrite.
    Same values and gradients as ``basis(x) . W + silu(x) @ base_weight^T``.
    """

    @staticmethod
    def forward(ctx, x, weight, base_weight, basis, *params):  # type: ignore[override]
        n_out, n_in, k = weight.shape
        ctx.basis = basis
        ctx.k_major = k_major = _k_major_call(basis, weight)
        act = F.silu(x) if base_weight is not None else None
        lo = 0
        if not k_major:
            feats, saved = basis._fused_forward(x, params, True)
            feats = feats.view(x.shape[0], -1)
            w_k = weight.reshape(n_out, -1)
            y = feats @ w_k.t()
        else:
            lo = 1 if basis.constant_index == 0 else 0
            feats = x.new_empty(k, x.shape[0], n_in)
            kw = {"fill_constant": False} if lo else {}
            _, saved = basis._fused_forward(x, params, True, out=feats, **kw)
            w_k = _basis_major(weight)
            ctx.weight_copied = w_k.data_ptr() != weight.data_ptr()
            if lo:
                y = torch.addmm(w_k[0].sum(1), feats[1], w_k[1].t())
            else:
                y = feats[0] @ w_k[0].t()
            for j in range(lo + 1, k):
                y.addmm_(feats[j], w_k[j].t())
        ctx.lo = lo
        if act is not None:
            y.addmm_(act, base_weight.t())
        ctx.save_for_backward(x, act, base_weight, feats, w_k, *saved)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, act, base_weight, feats, w_k, *saved = ctx.saved_tensors
        need_x, need_w, need_base = ctx.needs_input_grad[:3]
        need_params = ctx.needs_input_grad[4:]
        basis, lo = ctx.basis, ctx.lo
        grad_w = grad_base = None
        if need_base:
            grad_base = grad.t() @ act
        if need_w:
            if not ctx.k_major:
                grad_w = (grad.t() @ feats).view(-1, basis.in_features, basis.n_basis)
            else:
                gw = torch.empty_like(w_k)
                k = gw.shape[0] - lo
                torch.bmm(grad.t().expand(k, -1, -1), feats[lo:], out=gw[lo:])
                if lo:  # d y_o / d W[o, i, 0] = 1 for every input i
                    gw[0] = grad.sum(0).unsqueeze(1)
                # in the weight's own layout: autograd would otherwise make the strided
                # copy into a contiguous weight's layout itself
                grad_w = _basis_minor(gw) if ctx.weight_copied else gw.permute(1, 2, 0)
        grads: tuple = (None,) * (1 + len(need_params))
        if need_x or any(need_params):
            ws = _workspace(feats.shape, feats.dtype, feats.device)
            if not ctx.k_major:
                torch.mm(grad, w_k, out=ws)
                gf = ws.view(feats.shape[0], basis.in_features, basis.n_basis)
                grads = basis._fused_backward(gf, tuple(saved), need_x, need_params, True)
            else:  # slot 0 of the constant stays undefined: its basis ignores it
                k = ws.shape[0] - lo
                torch.bmm(grad.expand(k, -1, -1), w_k[lo:], out=ws[lo:])
                grads = basis._fused_backward(ws, tuple(saved), need_x, need_params, True, True)
            if act is not None and need_x:
                base_gx = torch.ops.aten.silu_backward(grad @ base_weight, x)
                gx = grads[0]
                grads = (base_gx if gx is None else gx.add_(base_gx), *grads[1:])
        return (grads[0], grad_w, grad_base, None, *grads[1:])


def _k_major_call(basis: KANBasis, weight: torch.Tensor) -> bool:
    """Whether the fused function runs basis-major for this weight.

    A contiguous ``(out, in, K)`` weight would need a transposed copy for the basis-major
    products (and its gradient a transposed copy back), so a basis whose ``(M, in, K)``
    features cost less extra than those copies (``k_minor_ok``) runs one
    ``(M, in * K) @ (in * K, out)`` product on the weight as stored instead (for
    ``K = 1`` that is one plain matrix multiply rather than a batched one).
    """
    if not basis.k_major:
        return False
    if basis.k_minor_ok and weight.is_contiguous():  # (K = 1: both layouts at once)
        return False
    return True


def _basis_major(weight: torch.Tensor) -> torch.Tensor:
    """(out, in, K) -> (K, out, in) contiguous: a view of a basis-major weight, else a copy."""
    w = weight.permute(2, 0, 1)
    if w.is_contiguous():
        return w
    if weight.is_contiguous() and _identity_product_ok(weight):
        k = weight.shape[-1]
        out = weight.new_empty(w.shape)
        torch.mm(_identity(k, weight), weight.view(-1, k).t(), out=out.view(k, -1))
        return out
    return w.contiguous()


def _basis_minor(grad: torch.Tensor) -> torch.Tensor:
    """(K, out, in) contiguous -> a contiguous (out, in, K) copy (a contiguous weight's gradient)."""
    k = grad.shape[0]
    if _identity_product_ok(grad):
        out = grad.new_empty(*grad.shape[1:], k)
        torch.mm(grad.view(k, -1).t(), _identity(k, grad), out=out.view(-1, k))
        return out
    return grad.permute(1, 2, 0).contiguous()


def _identity_product_ok(t: torch.Tensor) -> bool:
    """Whether moving the basis axis may run as a product with the identity matrix.

    A strided copy that moves the short basis axis ``K`` reads every cache line ``K``
    times: on an Intel Xeon it took 2.5-10x the time of a plain copy of the same bytes
    (``K`` = 4 to 8, docs/kan.md). ``(N, K) -> (K, N)`` as ``I_K @ A^T`` lets the BLAS
    library's blocked transposing pack do the move, near the speed of a plain copy. Each
    result is ``a * 1`` plus products with 0, so finite values are copied exactly; a
    non-finite entry turns the other ``K - 1`` entries of its (out, in) pair into NaN
    (any output or step that reads such a weight is non-finite either way). Only on the
    CPU, in float32 and float64 at full matmul precision: a reduced ``float32`` matmul
    precision (bf16 or TF32 kernels) would round the copy.
    """
    if t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64):
        return False
    if t.dtype == torch.float32:  # the CPU's float32 GEMM takes bf16/TF32 kernels from oneDNN
        precision = getattr(torch.backends.mkldnn.matmul, "fp32_precision", None)
        if precision is None:  # a PyTorch without the per-backend setting
            return torch.get_float32_matmul_precision() == "highest"
        return precision in ("none", "ieee")
    return True


def _identity(k: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(k, dtype=like.dtype, device=like.device)


def _new_weight(n_out: int, n_in: int, k: int, k_major: bool, **kw: Any) -> torch.Tensor:
    """An uninitialised ``(out, in, K)`` weight, stored basis-major when ``k_major``."""
    if k_major:
        return torch.empty(k, n_out, n_in, **kw).permute(1, 2, 0)
    return torch.empty(n_out, n_in, k, **kw)


_WORKSPACE = threading.local()


def _workspace(shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A buffer for the feature gradient, kept between backward passes of this thread.

    The feature gradient lives only inside one backward call, so its (large) buffer is
    reused rather than allocated and page-faulted anew every step.
    """
    key = (tuple(shape), dtype, device)
    bufs = _WORKSPACE.__dict__.setdefault("bufs", {})
    if key not in bufs:
        if len(bufs) >= 8:  # a model with many layer shapes: keep the latest few
            bufs.pop(next(iter(bufs)))
        bufs[key] = torch.empty(shape, dtype=dtype, device=device)
    return bufs[key]


def _use_fused(basis: KANBasis, x: torch.Tensor, weight: torch.Tensor) -> bool:
    if not basis.fused or x.device.type == "meta" or not torch.is_grad_enabled():
        return False
    if torch.is_autocast_enabled(x.device.type) or x.dtype != weight.dtype:
        return False
    return True


class KANLinear(nn.Module):
    """A KAN layer ``in_features -> out_features`` (KAN paper, Eq. 2.6).

    ``basis`` is a name from ``archbench.layers.kan_basis.BASES`` (``**basis_opts`` go to
    it) or a built basis. ``base_act="auto"`` is SiLU, or none for the rational basis
    (then the layer is KAT's GR-KAN: a linear map of the group-rational activations).

    ``basis_major_weight=True`` stores the weight basis-major (strides
    ``(in, 1, out * in)``, for a basis with basis-major features), so the fused products
    read it in place instead of copying it every call: faster (docs/kan.md), but the
    parameter is then not contiguous, and code that flattens parameters or gradients
    with ``.view(-1)`` fails on it (``torch.optim.LBFGS``, ``parameters_to_vector``).
    The default keeps it contiguous.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        basis: str | KANBasis = "bspline",
        base_act: str | None = "auto",
        bias: bool = False,
        track_activations: bool = False,
        basis_major_weight: bool = False,
        **basis_opts: Any,
    ) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(
                f"in_features and out_features must be >= 1, got {in_features}, {out_features}"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.basis = create_basis(basis, in_features, **basis_opts)
        self.base_act_name, self._act = _base_act(base_act, self.basis)
        k = self.basis.n_basis
        # basis_major_weight: stored basis-major for a basis that computes its features
        # that way (see _KANLinearFunction); the shape, and so the state dict, is
        # (out, in, K) either way
        self.basis_major_weight = bool(basis_major_weight) and self.basis.k_major
        self.weight = nn.Parameter(
            _new_weight(out_features, in_features, k, self.basis_major_weight)
        )
        self.base_weight = (
            nn.Parameter(torch.empty(out_features, in_features)) if self._act is not None else None
        )
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.track_activations = track_activations
        self.edge_l1: torch.Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Var[W] = init_std^2 / (in * K); for the rational basis (K = 1) this is KAT's
        # variance-preserving 1 / (fan_in * E[F(x)^2])
        std = self.basis.init_std / math.sqrt(self.in_features * self.basis.n_basis)
        nn.init.normal_(self.weight, 0.0, std)
        if self.base_weight is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.base_weight, -bound, bound)

    def full_weight(self) -> torch.Tensor:
        """(out, in, K [+ 1]): spline coefficients with the base weight as the last column."""
        if self.base_weight is None:
            return self.weight
        return torch.cat([self.weight, self.base_weight.unsqueeze(-1)], dim=-1)

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # type: ignore[override]
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if not keep_vars:  # a basis-major weight is saved contiguous (safetensors needs it)
            destination[prefix + "weight"] = destination[prefix + "weight"].contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.track_activations:
            feats = _features(self.basis, self._act, x)
            w = self.full_weight()
            phi = torch.einsum("...ik,oik->...oi", feats, w)
            self.edge_l1 = phi.abs().reshape(-1, self.out_features, self.in_features).mean(0)
            return F.linear(feats.flatten(-2), w.flatten(1), self.bias)
        base_done = False
        if _use_fused(self.basis, x, self.weight):
            self.basis._check(x)
            params = self.basis._fused_params(x.dtype)
            # a SiLU base branch joins the fused function (no separate autograd nodes)
            merge = self.base_act_name == "silu"
            y = _KANLinearFunction.apply(
                x.reshape(-1, self.in_features),
                self.weight,
                self.base_weight if merge else None,
                self.basis,
                *params,
            ).view(*x.shape[:-1], self.out_features)
            base_done = merge
            if self.bias is not None:
                y = y + self.bias
        else:
            y = F.linear(self.basis(x).flatten(-2), self.weight.flatten(1), self.bias)
        if self._act is not None and not base_done:
            y = y + F.linear(self._act(x), self.base_weight)
        return y

    def edge_functions(self, x: torch.Tensor) -> torch.Tensor:
        """phi_oi(x_i) for every edge: (..., in) -> (..., out, in)."""
        return torch.einsum(
            "...ik,oik->...oi", _features(self.basis, self._act, x), self.full_weight()
        )

    # ----- grid update and extension (B-spline basis only) -----------------------------
    def _spline_basis(self) -> BSplineBasis:
        if not isinstance(self.basis, BSplineBasis):
            raise TypeError(
                f"grid update needs the 'bspline' basis, this layer has {type(self.basis).__name__}"
            )
        return self.basis

    @torch.no_grad()
    def _refit(self, x: torch.Tensor, new_grid: torch.Tensor) -> None:
        basis = self._spline_basis()
        x = x.reshape(-1, self.in_features)
        target = torch.einsum("nik,oik->ino", basis(x), self.weight)  # spline part per edge
        basis.set_grid(new_grid)
        design = basis(x).transpose(0, 1)  # (in, n, K')
        sol = torch.linalg.lstsq(design.double(), target.double()).solution  # (in, K', out)
        w = _new_weight(
            *self.weight.shape[:2],
            sol.shape[1],
            self.basis_major_weight,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        self.weight = nn.Parameter(w.copy_(sol.permute(2, 0, 1)))

    @torch.no_grad()
    def update_grid(self, x: torch.Tensor, grid_eps: float = 0.02) -> None:
        """Move the knots to the samples' quantiles (blended with a uniform grid) and refit.

        The spline coefficients become a new Parameter: rebuild the optimizer afterwards.
        """
        basis = self._spline_basis()
        x = x.reshape(-1, self.in_features)
        self._refit(x, basis.grid_from_samples(x, basis.grid_size, grid_eps))

    @torch.no_grad()
    def extend_grid(
        self, grid_size: int, x: torch.Tensor | None = None, n_points: int = 512
    ) -> None:
        """Refine to ``grid_size`` intervals over the same range, keeping the function.

        The coefficients are refitted by least squares on ``x`` (or, when ``x`` is None,
        on ``n_points`` points spread over each feature's grid range).
        """
        basis = self._spline_basis()
        k = basis.spline_order
        lo, hi = basis.grid[:, k], basis.grid[:, -k - 1]
        if x is None:
            t = torch.linspace(0, 1, n_points, device=lo.device)
            x = lo[None] + (hi - lo)[None] * t[:, None]
        h = (hi - lo) / grid_size
        steps = torch.arange(-k, grid_size + k + 1, device=lo.device, dtype=lo.dtype)
        new_grid = lo[:, None] + h[:, None] * steps[None]
        self._refit(x, new_grid)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"basis={type(self.basis).__name__}, n_basis={self.basis.n_basis}, base_act={self.base_act_name}"
        )


# ----- convolution ----------------------------------------------------------------------

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_PAD_MODES = ("zeros", "reflect", "replicate", "circular")


def _ntuple(v: int | tuple[int, ...], n: int, name: str) -> tuple[int, ...]:
    out = tuple(v) if isinstance(v, (tuple, list)) else (v,) * n
    if len(out) != n or any(not isinstance(i, int) for i in out):
        raise ValueError(f"{name} must be an int or a tuple of {n} ints, got {v!r}")
    return out


class _KANConvNd(nn.Module):
    ndim: int = 2

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] = 0,
        dilation: int | tuple[int, ...] = 1,
        groups: int = 1,
        basis: str | KANBasis = "bspline",
        base_act: str | None = "auto",
        bias: bool = False,
        padding_mode: str = "zeros",
        **basis_opts: Any,
    ) -> None:
        super().__init__()
        n = self.ndim
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups ({groups}) must divide in_channels ({in_channels}) and out_channels ({out_channels})"
            )
        if padding_mode not in _PAD_MODES:
            raise ValueError(f"padding_mode must be one of {_PAD_MODES}, got {padding_mode!r}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _ntuple(kernel_size, n, "kernel_size")
        self.stride = _ntuple(stride, n, "stride")
        self.padding = _ntuple(padding, n, "padding")
        self.dilation = _ntuple(dilation, n, "dilation")
        if (
            min(self.kernel_size) < 1
            or min(self.stride) < 1
            or min(self.dilation) < 1
            or min(self.padding) < 0
        ):
            raise ValueError("kernel_size, stride and dilation must be >= 1 and padding >= 0")
        self.padding_mode = padding_mode
        self.basis = create_basis(basis, in_channels, **basis_opts)
        self.base_act_name, self._act = _base_act(base_act, self.basis)
        k = self.basis.n_basis
        cin = in_channels // groups
        self.weight = nn.Parameter(torch.empty(out_channels, cin, k, *self.kernel_size))
        self.base_weight = (
            nn.Parameter(torch.empty(out_channels, cin, *self.kernel_size))
            if self._act is not None
            else None
        )
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        # F.pad takes (last dim first) pairs
        self._pad = tuple(p for p in reversed(self.padding) for _ in range(2))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = (self.in_channels // self.groups) * math.prod(self.kernel_size)
        std = self.basis.init_std / math.sqrt(fan_in * self.basis.n_basis)
        nn.init.normal_(self.weight, 0.0, std)
        if self.base_weight is not None:
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(self.base_weight, -bound, bound)

    def full_weight(self) -> torch.Tensor:
        """(out, in/groups * (K [+ 1]), *kernel): channel-major, basis-minor."""
        w = self.weight
        if self.base_weight is not None:
            w = torch.cat([w, self.base_weight.unsqueeze(2)], dim=2)
        return w.flatten(1, 2)

    def pad_input(self, x: torch.Tensor) -> torch.Tensor:
        if not any(self._pad):
            return x
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        return F.pad(x, self._pad, mode=mode)

    def pixel_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) -> (B, C * (K [+ 1]), *S): the KAN features of every input pixel."""
        feats = _features(self.basis, self._act, x.movedim(1, -1))  # (B, *S, C, K')
        return feats.flatten(-2).movedim(-1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != self.ndim + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects (B, {self.in_channels}, ...) with {self.ndim} "
                f"spatial dims, got {tuple(x.shape)}"
            )
        x = self.pad_input(x)
        conv = _CONV[self.ndim]
        feats = self.basis(x.movedim(1, -1)).flatten(-2).movedim(-1, 1)  # (B, C*K, *S)
        y = conv(
            feats, self.weight.flatten(1, 2), self.bias, self.stride, 0, self.dilation, self.groups
        )
        if self._act is not None:  # the base branch: an ordinary convolution of b(x)
            y = y + conv(
                self._act(x), self.base_weight, None, self.stride, 0, self.dilation, self.groups
            )
        return y

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, basis={type(self.basis).__name__}, n_basis={self.basis.n_basis}"
        )


class KANConv1d(_KANConvNd):
    """KAN convolution over (B, C, L)."""

    ndim = 1


class KANConv2d(_KANConvNd):
    """KAN convolution over (B, C, H, W)."""

    ndim = 2


class KANConv3d(_KANConvNd):
    """KAN convolution over (B, C, D, H, W)."""

    ndim = 3


def unfold_kan_conv2d(layer: KANConv2d, x: torch.Tensor) -> torch.Tensor:
    """Reference: the KAN applied to every unfolded patch (slow; for tests and benchmarks)."""
    xp = layer.pad_input(x)
    b, c = xp.shape[:2]
    kh, kw = layer.kernel_size
    patches = F.unfold(xp, (kh, kw), dilation=layer.dilation, stride=layer.stride)  # (B, C*kk, L)
    n_loc = patches.shape[-1]
    patches = patches.view(b, c, kh * kw, n_loc).permute(0, 3, 2, 1)  # (B, L, kk, C)
    feats = _features(layer.basis, layer._act, patches)  # (B, L, kk, C, K')
    g = layer.groups
    kp = feats.shape[-1]
    feats = feats.view(b, n_loc, kh * kw, g, c // g, kp)
    w = layer.weight
    if layer.base_weight is not None:
        w = torch.cat([w, layer.base_weight.unsqueeze(2)], dim=2)  # (out, C/g, K', kh, kw)
    w = w.view(g, layer.out_channels // g, c // g, kp, kh * kw)
    y = torch.einsum("blpgck,gockp->blgo", feats, w).reshape(b, n_loc, layer.out_channels)
    if layer.bias is not None:
        y = y + layer.bias
    h_out = (xp.shape[2] - layer.dilation[0] * (kh - 1) - 1) // layer.stride[0] + 1
    w_out = (xp.shape[3] - layer.dilation[1] * (kw - 1) - 1) // layer.stride[1] + 1
    return y.transpose(1, 2).reshape(b, layer.out_channels, h_out, w_out)


# ----- bottleneck KAN convolution (design-principles paper) -----------------------------

_NORMS = {
    1: {"batch": nn.BatchNorm1d, "instance": nn.InstanceNorm1d},
    2: {"batch": nn.BatchNorm2d, "instance": nn.InstanceNorm2d},
    3: {"batch": nn.BatchNorm3d, "instance": nn.InstanceNorm3d},
}
_CONV_MODULES = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_KAN_CONVS = {1: KANConv1d, 2: KANConv2d, 3: KANConv3d}


class _BottleneckKANConvNd(nn.Module):
    """Bottleneck KAN convolution (Drokin, 2024, Sec. 3).

    ``y = SiLU(norm(up(KANConv(down(x))) + conv(SiLU(x))))`` where ``down``/``up`` are 1x1
    convolutions to and from ``inner = max(max(in, out) / groups / reduction, min_inner)``
    channels per group, capped by the group width. The KAN convolution uses Gram
    polynomials by default, configured as torch-conv-kan's bottleneck KAGN layer: features
    ``SiLU(gram(tanh(down(x))))`` with learnable recurrence coefficients (``learn_beta``,
    initialised with the release's std 1 / (k^d * in_channels * (degree + 1)));
    ``basis_opts`` override these defaults. Deviation: padded positions contribute the
    features of 0 (as every archbench KAN convolution does, equal to the unfold
    formulation) where the release zero-pads the features.
    """

    ndim: int = 2

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        basis: str | KANBasis = "gram",
        reduction: float = 4.0,
        min_inner: int = 16,
        norm: str | None = "batch",
        **basis_opts: Any,
    ) -> None:
        super().__init__()
        n = self.ndim
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups ({groups}) must divide in_channels ({in_channels}) and out_channels ({out_channels})"
            )
        if norm is not None and norm not in _NORMS[n]:
            raise ValueError(f"norm must be one of {sorted(_NORMS[n])} or None, got {norm!r}")
        if reduction <= 0:
            raise ValueError(f"reduction must be > 0, got {reduction}")
        cin_g, cout_g = in_channels // groups, out_channels // groups
        inner = int(max(cin_g, cout_g) / reduction)
        if inner < min_inner:
            inner = min(min_inner, cin_g, cout_g)
        self.inner_channels = inner * groups
        conv = _CONV_MODULES[n]
        self.base_conv = conv(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False
        )
        self.down = conv(in_channels, self.inner_channels, 1, groups=groups, bias=False)
        if basis == "gram":
            degree = basis_opts.setdefault("degree", 3)
            basis_opts.setdefault("learn_beta", True)
            basis_opts.setdefault("post_act", "silu")
            basis_opts.setdefault(
                "beta_init_std", 1.0 / (kernel_size**n * in_channels * (degree + 1))
            )
        self.kan = _KAN_CONVS[n](
            self.inner_channels,
            self.inner_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            basis=basis,
            base_act=None,
            **basis_opts,
        )
        self.up = conv(self.inner_channels, out_channels, 1, groups=groups, bias=False)
        self.norm = _NORMS[n][norm](out_channels) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(self.kan(self.down(x))) + self.base_conv(F.silu(x))
        return F.silu(self.norm(y))


class BottleneckKANConv1d(_BottleneckKANConvNd):
    ndim = 1


class BottleneckKANConv2d(_BottleneckKANConvNd):
    ndim = 2


class BottleneckKANConv3d(_BottleneckKANConvNd):
    ndim = 3


# ----- S-KAN selection phase ------------------------------------------------------------


@torch.no_grad()
def select_activations(model: nn.Module) -> int:
    """S-KAN's selection phase for every KAN layer of ``model`` with a selectable basis.

    Each input unit keeps the candidate activation it weighs most: that candidate's
    coefficients are multiplied by its selection weight (so the kept part of the function
    is unchanged), the other candidates' coefficients are zeroed and their features
    dropped, and the basis switches to the hard selection. Training then continues with
    one activation per unit. Returns the number of layers selected; layers already
    selected are left alone. Rebuild the optimizer afterwards (the logits are frozen).
    """
    from .kan_basis import SelectableBasis

    count = 0
    for m in model.modules():
        if not isinstance(m, (KANLinear, _KANConvNd)):
            continue
        basis = m.basis
        if not isinstance(basis, SelectableBasis) or basis.is_selected:
            continue
        sel, kept = basis.select_()
        scale = torch.zeros(basis.in_features, basis.n_basis, dtype=m.weight.dtype)
        for j, sl in enumerate(basis.block_slices()):
            rows = sel == j
            scale[rows, sl] = kept[rows, None].to(scale.dtype)
        scale = scale.to(m.weight.device)
        if isinstance(m, KANLinear):
            m.weight.mul_(scale)  # (out, in, K)
        else:
            g = m.groups
            out_g, cin_g = m.out_channels // g, m.in_channels // g
            extra = (1,) * len(m.kernel_size)
            for gi in range(g):
                block = scale[gi * cin_g : (gi + 1) * cin_g]  # (cin_g, K)
                m.weight[gi * out_g : (gi + 1) * out_g].mul_(block.view(1, cin_g, -1, *extra))
        count += 1
    return count


# ----- regularisation (KAN paper, Sec. 2.5.1) -------------------------------------------


def kan_regularization(
    model: nn.Module, l1: float = 1.0, entropy: float = 2.0, weight_l1: float = 0.0
) -> torch.Tensor:
    """KAN paper's sparsification penalty summed over KAN layers.

    For each ``KANLinear`` with ``track_activations=True`` (after a forward pass), with
    ``A[o, i]`` the mean |phi_oi| over the batch: ``l1 * sum(A) + entropy * H(A / sum(A))``.
    ``weight_l1`` adds the mean absolute spline/base weight of every KAN layer (linear
    and convolutional), the weight penalty studied in the design-principles paper.
    """
    total: torch.Tensor | None = None
    for m in model.modules():
        terms = []
        if isinstance(m, KANLinear) and m.track_activations:
            if m.edge_l1 is None:
                raise RuntimeError("run a forward pass before kan_regularization")
            a = m.edge_l1
            s = a.sum()
            p = a / (s + 1e-12)
            terms.append(l1 * s - entropy * (p * torch.log(p + 1e-12)).sum())
        if weight_l1 and isinstance(m, (KANLinear, _KANConvNd)):
            terms.append(weight_l1 * m.full_weight().abs().mean())
        for t in terms:
            total = t if total is None else total + t
    if total is None:
        return torch.zeros(())
    return total
