"""Local and structured self-attention variants.

Token tensors are (B, N, C) with the grid (H, W) passed alongside; spatial tensors are
NCHW. Each class says whether it runs through ``F.scaled_dot_product_attention`` (SDPA)
and, when it cannot, why.

- :class:`CosineCpbAttention` (TransNeXt, global stage): length-scaled cosine attention
  with a query embedding and a continuous relative position bias. Uses SDPA.
- :class:`AggregatedAttention` (TransNeXt): pixel-focused sliding-window keys plus pooled
  keys under one softmax, with learnable tokens. Not SDPA (see the class).
- :class:`HaloAttention` (HaloNet): blocked local attention with halos and relative
  position logits. Uses SDPA with the relative logits as the additive bias.
- :class:`SlicedGroupAttention` (SReT): self-attention inside token groups. Uses SDPA.
- :class:`WindowAttention` (MAFormer local branch, Swin-style): non-overlapping windows. Uses SDPA.
- :class:`MSAConv2d` (TiC): attention inside every convolution window, then the
  convolution. Not SDPA (see the class).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "AggregatedAttention",
    "CosineCpbAttention",
    "HaloAttention",
    "MSAConv2d",
    "SlicedGroupAttention",
    "WindowAttention",
    "window_partition",
    "window_reverse",
    "continuous_position_index",
    "pooled_axis_positions",
]


# ----------------------------------------------------------------------------------
# TransNeXt: continuous relative position bias between a query grid and a pooled grid
# ----------------------------------------------------------------------------------
def pooled_axis_positions(length: int, pooled: int) -> list[float]:
    """Centre of each adaptive-average-pooling bin of ``range(length)`` into ``pooled`` bins."""
    out = []
    for i in range(pooled):
        start = (i * length) // pooled
        end = -((-(i + 1) * length) // pooled)
        out.append(sum(range(start, end)) / (end - start))
    return out


@lru_cache(maxsize=64)
def _position_tables(
    query: tuple[int, int], key: tuple[int, int], pretrain: tuple[int, int]
) -> tuple[list[list[float]], list[int]]:
    """Unique log-spaced (dy, dx) offsets between a query grid and a pooled key grid.

    Plain Python (it depends only on sizes), so models build and run on ``meta``.
    Returns the table of offsets and, for every (query, key) pair, its row in the table.
    """
    axes = []
    for q_len, k_len, p_len in zip(query, key, pretrain):
        kpos = pooled_axis_positions(q_len, k_len)
        denom = max(p_len - 1, 1)
        rel = [[(qi - kj) / denom * 8 for kj in kpos] for qi in range(q_len)]
        values = sorted({v for row in rel for v in row})
        where = {v: i for i, v in enumerate(values)}
        idx = [[where[v] for v in row] for row in rel]
        axes.append((values, idx))
    (hv, hidx), (wv, widx) = axes

    def squash(v: float) -> float:
        return math.copysign(math.log2(abs(v) + 1.0) / 3.0, v)  # log2(8) = 3

    table = [[squash(a), squash(b)] for a in hv for b in wv]
    index = [
        hidx[qh][kh] * len(wv) + widx[qw][kw]
        for qh in range(query[0])
        for qw in range(query[1])
        for kh in range(key[0])
        for kw in range(key[1])
    ]
    return table, index


def continuous_position_index(
    query: tuple[int, int],
    key: tuple[int, int],
    pretrain: tuple[int, int],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(table, index) tensors for a continuous position bias MLP (TransNeXt, Swin-V2 style)."""
    table, index = _position_tables(tuple(query), tuple(key), tuple(pretrain))
    return (
        torch.tensor(table, dtype=torch.float32, device=device),
        torch.tensor(index, dtype=torch.long, device=device),
    )


class _ContinuousBias(nn.Module):
    """2 -> hidden -> heads MLP turning log-spaced offsets into per-head biases."""

    def __init__(self, num_heads: int, hidden: int = 512) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_heads)

    def forward(
        self, query: tuple[int, int], key: tuple[int, int], pretrain: tuple[int, int]
    ) -> torch.Tensor:
        table, index = continuous_position_index(query, key, pretrain, self.fc1.weight.device)
        table = table.to(self.fc1.weight.dtype)
        bias = self.fc2(self.act(self.fc1(table)))  # (T, heads)
        nq, nk = query[0] * query[1], key[0] * key[1]
        return bias.transpose(0, 1)[:, index].view(-1, nq, nk)


def _softplus_inverse(value: float) -> float:
    return math.log(math.expm1(value))


class CosineCpbAttention(nn.Module):
    """Global attention of TransNeXt's last stage.

    logits = (normalize(q) + query_embedding) * softplus(temperature) * log(N)
    . normalize(k)^T + cpb(relative offsets). Runs through SDPA with ``scale=1`` and the
    position bias as ``attn_mask`` (it is exactly softmax(QK^T + bias)V).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        pretrain_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.pretrain_size = pretrain_size
        self.temperature = nn.Parameter(torch.full((num_heads, 1, 1), _softplus_inverse(1 / 0.24)))
        self.query_embedding = nn.Parameter(torch.zeros(num_heads, 1, self.head_dim))
        nn.init.trunc_normal_(self.query_embedding, std=0.02)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.cpb = _ContinuousBias(num_heads)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        scale = F.softplus(self.temperature) * math.log(n)
        q = (F.normalize(q, dim=-1) + self.query_embedding) * scale
        bias = self.cpb(size, size, self.pretrain_size or size).unsqueeze(0).to(q.dtype)
        out = F.scaled_dot_product_attention(
            q,
            F.normalize(k, dim=-1),
            v,
            attn_mask=bias,
            dropout_p=self.attn_drop if self.training else 0.0,
            scale=1.0,
        )
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class AggregatedAttention(nn.Module):
    """Aggregated attention (TransNeXt): pixel-focused sliding window + pooled tokens.

    Every query attends, under one softmax, to the ``window x window`` neighbourhood
    around itself (fine, foveal keys) and to the feature map pooled to
    ``grid // sr_ratio`` (coarse keys). Queries and keys are L2-normalized; the logits
    are scaled by a learnable per-head temperature and log(number of keys); a learnable
    query embedding is added to every query; local keys carry a learnable relative bias
    and pooled keys a continuous (MLP) position bias. The learnable tokens add a
    query-dependent, *unnormalized* weight ``q . T + b`` to the softmaxed local weights.

    Not SDPA: the local keys differ per query (a sliding window, gathered by unfold), and
    the learnable-token term is added after the softmax, so the output is not of the
    form softmax(QK^T + bias)V. Written with unfold and einsum.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 3,
        sr_ratio: int = 2,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        pretrain_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if window_size < 1 or window_size % 2 == 0:
            raise ValueError(f"window_size must be a positive odd number, got {window_size}")
        if sr_ratio < 1:
            raise ValueError(f"sr_ratio must be >= 1, got {sr_ratio}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size
        self.local_len = window_size**2
        self.sr_ratio = sr_ratio
        self.pretrain_size = pretrain_size
        self.temperature = nn.Parameter(torch.full((num_heads, 1, 1), _softplus_inverse(1 / 0.24)))
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.query_embedding = nn.Parameter(torch.zeros(num_heads, 1, self.head_dim))
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        # pooled (coarse) branch
        self.sr = nn.Conv2d(dim, dim, 1)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(dim)
        self.cpb = _ContinuousBias(num_heads)
        # local (fine) branch
        self.relative_pos_bias_local = nn.Parameter(torch.zeros(num_heads, self.local_len))
        self.learnable_tokens = nn.Parameter(torch.zeros(num_heads, self.head_dim, self.local_len))
        self.learnable_bias = nn.Parameter(torch.zeros(num_heads, 1, self.local_len))
        nn.init.trunc_normal_(self.query_embedding, std=0.02)
        nn.init.trunc_normal_(self.relative_pos_bias_local, std=0.0004)
        nn.init.trunc_normal_(self.learnable_tokens, std=0.02)

    def pool_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return max(size[0] // self.sr_ratio, 1), max(size[1] // self.sr_ratio, 1)

    def _window_mask(self, size: tuple[int, int], device: torch.device) -> torch.Tensor:
        """(N, L) bool, True where a window position falls outside the image."""
        ones = torch.ones(1, 1, *size, device=device)
        inside = F.unfold(ones, self.window_size, padding=self.window_size // 2)
        return inside[0].transpose(0, 1) == 0

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        h, w = size
        heads, hd, win = self.num_heads, self.head_dim, self.window_size
        pool = self.pool_size(size)
        pool_len = pool[0] * pool[1]

        outside = self._window_mask(size, x.device)  # (N, L)
        valid_local = (~outside).sum(-1, keepdim=True).to(x.dtype)  # (N, 1)
        length_scale = torch.log(valid_local + pool_len)  # log(number of keys) per query

        q = F.normalize(self.q(x).reshape(b, n, heads, hd).transpose(1, 2), dim=-1)
        q_scaled = (q + self.query_embedding) * F.softplus(self.temperature) * length_scale

        k, v = self.kv(x).chunk(2, dim=-1)
        k = F.normalize(k.reshape(b, n, heads, hd), dim=-1).reshape(b, n, c)
        kv = torch.cat([k, v], dim=-1).transpose(1, 2).reshape(b, 2 * c, h, w)
        kv = F.unfold(kv, win, padding=win // 2).reshape(b, 2, heads, hd, self.local_len, n)
        k_local, v_local = kv[:, 0], kv[:, 1]  # (B, heads, d, L, N)

        attn_local = torch.einsum("bhnd,bhdln->bhnl", q_scaled, k_local)
        attn_local = attn_local + self.relative_pos_bias_local.unsqueeze(1)
        attn_local = attn_local.masked_fill(outside, float("-inf"))

        pooled = x.transpose(1, 2).reshape(b, c, h, w)
        pooled = F.adaptive_avg_pool2d(self.act(self.sr(pooled)), pool)
        pooled = self.norm(pooled.flatten(2).transpose(1, 2))
        kv_pool = self.kv(pooled).reshape(b, pool_len, 2, heads, hd).permute(2, 0, 3, 1, 4)
        k_pool, v_pool = F.normalize(kv_pool[0], dim=-1), kv_pool[1]
        pretrain = self.pretrain_size or size
        pool_bias = self.cpb(size, pool, pretrain).to(x.dtype)
        attn_pool = q_scaled @ k_pool.transpose(-2, -1) + pool_bias

        attn = torch.cat([attn_local, attn_pool], dim=-1).softmax(dim=-1)
        attn = self.attn_drop(attn)
        attn_local, attn_pool = attn.split([self.local_len, pool_len], dim=-1)
        token_weights = q @ self.learnable_tokens + self.learnable_bias  # (B, heads, N, L)
        out_local = torch.einsum("bhnl,bhdln->bhnd", attn_local + token_weights, v_local)
        out = out_local + attn_pool @ v_pool
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


# ----------------------------------------------------------------------------------
# HaloNet: blocked local self-attention with halos
# ----------------------------------------------------------------------------------
class HaloAttention(nn.Module):
    """Blocked local self-attention with halos (Scaling Local Self-Attention, HaloNet).

    The (padded) map is cut into non-overlapping ``block_size`` query blocks; each block
    attends to its ``block_size + 2 * halo_size`` square neighbourhood (keys outside the
    image are zero, as the paper's zero padding). Logits are q.k/sqrt(d) plus relative
    position logits q.r_row + q.r_col (factorized, shared across heads, as in BoTNet /
    HaloNet). ``stride=2`` subsamples the queries of every block (the paper's strided
    self-attention for down-sampling); keys and values stay at full resolution.

    Uses SDPA: per block it is softmax(QK^T/sqrt(d) + B)V with the content-dependent
    relative logits B passed as ``attn_mask``. A block that covers the whole map with
    ``halo_size=0`` is exactly global attention with a relative position bias.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        num_heads: int = 8,
        block_size: int = 8,
        halo_size: int = 3,
        stride: int = 1,
        qk_dim: int | None = None,
        qkv_bias: bool = False,
    ) -> None:
        super().__init__()
        dim_out = dim_out or dim
        qk_dim = qk_dim or dim
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if block_size < 1 or block_size % stride:
            raise ValueError(
                f"block_size {block_size} must be a positive multiple of stride {stride}"
            )
        if halo_size < 0:
            raise ValueError(f"halo_size must be >= 0, got {halo_size}")
        if qk_dim % num_heads or dim_out % num_heads:
            raise ValueError(
                f"query/key width {qk_dim} and value width {dim_out} must divide by num_heads {num_heads}"
            )
        self.num_heads = num_heads
        self.block_size = block_size
        self.halo_size = halo_size
        self.stride = stride
        self.qk_dim, self.dim_out = qk_dim, dim_out
        self.head_dim = qk_dim // num_heads
        self.q = nn.Conv2d(dim, qk_dim, 1, bias=qkv_bias)
        self.kv = nn.Conv2d(dim, qk_dim + dim_out, 1, bias=qkv_bias)
        rel = 2 * block_size + 2 * halo_size - 1
        self.rel_height = nn.Parameter(torch.randn(rel, self.head_dim) * self.head_dim**-0.5)
        self.rel_width = nn.Parameter(torch.randn(rel, self.head_dim) * self.head_dim**-0.5)

    def _rel_index(self, block: int, device: torch.device) -> torch.Tensor:
        """(query positions, window positions) -> row of the relative table."""
        win = block + 2 * self.halo_size
        qpos = torch.arange(0, block, self.stride, device=device)
        kpos = torch.arange(win, device=device) - self.halo_size
        return kpos[None, :] - qpos[:, None] + self.block_size - 1 + self.halo_size

    def relative_logits(self, q: torch.Tensor, block: int) -> torch.Tensor:
        """q: (..., qb, qb, d) -> (..., qb*qb, win*win) relative position logits."""
        idx = self._rel_index(block, q.device)
        rh = self.rel_height[idx]  # (qb, win, d)
        rw = self.rel_width[idx]
        lh = torch.einsum("...xyd,xjd->...xyj", q, rh)
        lw = torch.einsum("...xyd,ykd->...xyk", q, rw)
        logits = lh.unsqueeze(-1) + lw.unsqueeze(-2)  # (..., qb, qb, win, win)
        return logits.flatten(-4, -3).flatten(-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        block = min(self.block_size, -(-max(h, w) // self.stride) * self.stride)
        ph, pw = -(-h // block) * block, -(-w // block) * block
        if (ph, pw) != (h, w):
            x = F.pad(x, (0, pw - w, 0, ph - h))
        nh, nw = ph // block, pw // block
        qb, win, heads, d = (
            block // self.stride,
            block + 2 * self.halo_size,
            self.num_heads,
            self.head_dim,
        )
        dv = self.dim_out // heads

        q = self.q(x[..., :: self.stride, :: self.stride])
        q = q.reshape(b, heads, d, nh, qb, nw, qb).permute(0, 3, 5, 1, 4, 6, 2)
        q = q.reshape(b * nh * nw, heads, qb, qb, d)
        bias = self.relative_logits(q, block)
        q = q.flatten(2, 3)

        kv = F.unfold(self.kv(x), win, padding=self.halo_size, stride=block)  # (B, C*win^2, L)
        kv = kv.reshape(b, self.qk_dim + self.dim_out, win * win, nh * nw).permute(0, 3, 1, 2)
        k, v = kv.split([self.qk_dim, self.dim_out], dim=2)
        k = k.reshape(b * nh * nw, heads, d, win * win).transpose(-2, -1)
        v = v.reshape(b * nh * nw, heads, dv, win * win).transpose(-2, -1)

        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        out = out.reshape(b, nh, nw, heads, qb, qb, dv).permute(0, 3, 6, 1, 4, 2, 5)
        out = out.reshape(b, self.dim_out, nh * qb, nw * qb)
        return out[..., : -(-h // self.stride), : -(-w // self.stride)]


# ----------------------------------------------------------------------------------
# SReT: sliced group self-attention
# ----------------------------------------------------------------------------------
class SlicedGroupAttention(nn.Module):
    """Multi-head self-attention inside ``num_groups`` slices of the token sequence (SReT).

    The N tokens are cut into ``num_groups`` contiguous slices of N / num_groups tokens
    and each slice attends only to itself, which divides the attention cost by the
    number of groups; the weights are the same whatever the grouping, so a recursive
    (weight-shared) block can run with different groupings at different depths. With
    ``shuffle=True`` the tokens are permuted before slicing and restored afterwards so
    that recursive passes mix tokens across slices: a fresh random permutation while
    training (as in SReT) and, in eval mode, a fixed strided interleave (token i goes to
    slice i mod G) so that inference is deterministic. One group is plain attention.

    Uses SDPA on the (B * groups, heads, N / groups, d) slices.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _permutation(self, n: int, groups: int, device: torch.device) -> torch.Tensor:
        if self.training:
            return torch.randperm(n, device=device)
        return torch.arange(n, device=device).view(n // groups, groups).t().reshape(-1)

    def forward(self, x: torch.Tensor, num_groups: int = 1, shuffle: bool = False) -> torch.Tensor:
        b, n, c = x.shape
        if num_groups < 1 or n % num_groups:
            raise ValueError(f"num_groups must be >= 1 and divide the {n} tokens, got {num_groups}")
        order = None
        if shuffle and num_groups > 1:
            order = self._permutation(n, num_groups, x.device)
            x = x[:, order]
        g, m = num_groups, n // num_groups
        qkv = self.qkv(x).reshape(b * g, m, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            *qkv.unbind(0), dropout_p=self.attn_drop if self.training else 0.0
        )
        out = out.transpose(1, 2).reshape(b, n, c)
        if order is not None:
            out = out[:, torch.argsort(order)]
        return self.proj_drop(self.proj(out))


# ----------------------------------------------------------------------------------
# Non-overlapping window attention
# ----------------------------------------------------------------------------------
def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/w * W/w, w*w, C)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping ``window x window`` windows.

    Token input (B, N, C) with its grid; maps whose sides are not multiples of the window
    are zero-padded and cropped back. Uses SDPA per window (padded tokens are masked out
    as keys). A window covering the whole map is plain global attention.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 7,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        self.num_heads = num_heads
        self.window_size = window_size
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        h, w = size
        win = min(self.window_size, max(h, w))
        ph, pw = -(-h // win) * win, -(-w // win) * win
        grid = x.reshape(b, h, w, c)
        mask = None
        if (ph, pw) != (h, w):
            grid = F.pad(grid, (0, 0, 0, pw - w, 0, ph - h))
            valid = torch.zeros(1, ph, pw, 1, dtype=torch.bool, device=x.device)
            valid[:, :h, :w] = True
            keep = window_partition(valid.to(x.dtype), win)[..., 0] > 0  # (windows, w*w)
            mask = keep.repeat(b, 1)[:, None, None, :]
        tokens = window_partition(grid, win)
        nw, m = tokens.shape[:2]
        hd = c // self.num_heads
        qkv = self.qkv(tokens).reshape(nw, m, 3, self.num_heads, hd).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            qkv[0],
            qkv[1],
            qkv[2],
            attn_mask=mask,
            dropout_p=self.attn_drop if self.training else 0.0,
        )
        out = window_reverse(out.transpose(1, 2).reshape(nw, m, c), win, ph, pw)
        out = out[:, :h, :w].reshape(b, n, c)
        return self.proj_drop(self.proj(out))


# ----------------------------------------------------------------------------------
# TiC: self-attention inside a convolution window (MSA-Conv)
# ----------------------------------------------------------------------------------
class MSAConv2d(nn.Module):
    """Multi-head self-attention inside every convolution window, then the convolution
    (TiC: Exploring Vision Transformer in Convolution).

    NCHW in and out. Q, K, V come from a 1x1 convolution; each pixel attends to the
    ``kernel_size x kernel_size`` (optionally dilated) neighbourhood around itself, with
    zero-padded keys and values at the border as in the release's CUDA op; the result
    is added to the input and passed through a (standard, dilated, strided or
    depthwise: ``groups``) ``kernel_size`` convolution, so the layer is a drop-in
    replacement for that convolution and works at any input size.

    ``shift`` > 0 turns on TiC's multi-directional cyclic shift: the key/value channels
    are split in four groups rolled cyclically by ``shift`` pixels up, down, left and
    right, so that every window also sees tokens far away. ``inter_pool`` computes keys
    and values from a 3x3 average-pooled map, enlarging each key's receptive field.

    Not SDPA: every query has its own sliding window of keys; SDPA would need a dense
    N x N mask (quadratic in the number of pixels, which MSA-Conv exists to avoid), and
    the zero-padded border keys are not expressible as a mask over real keys. Written
    with unfold and einsum.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        num_heads: int = 1,
        shift: int = 0,
        inter_pool: bool = False,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        if in_channels % num_heads:
            raise ValueError(f"in_channels {in_channels} is not divisible by num_heads {num_heads}")
        if shift and in_channels % 4:
            raise ValueError(f"the cyclic shift splits channels in 4 groups; got {in_channels}")
        self.kernel_size, self.dilation = kernel_size, dilation
        self.num_heads, self.shift, self.inter_pool = num_heads, shift, inter_pool
        self.qkv = nn.Conv2d(in_channels, in_channels * 3, 1)
        pad = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, pad, dilation, groups, bias=bias
        )

    def _cyclic_shift(self, t: torch.Tensor) -> torch.Tensor:
        s = self.shift
        a, b, c, d = t.chunk(4, dim=1)
        return torch.cat([a.roll(s, 2), b.roll(-s, 2), c.roll(s, 3), d.roll(-s, 3)], dim=1)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The attention part alone: (B, C, H, W) -> (B, C, H, W), before the residual."""
        b, c, h, w = x.shape
        heads, k2 = self.num_heads, self.kernel_size**2
        q, k, v = self.qkv(x).chunk(3, dim=1)
        if self.inter_pool:
            k = F.avg_pool2d(k, 3, 1, 1, count_include_pad=False)
            v = F.avg_pool2d(v, 3, 1, 1, count_include_pad=False)
        if self.shift:
            k, v = self._cyclic_shift(k), self._cyclic_shift(v)
        pad = self.dilation * (self.kernel_size - 1) // 2
        unfold = dict(kernel_size=self.kernel_size, dilation=self.dilation, padding=pad)
        d = c // heads
        k = F.unfold(k, **unfold).reshape(b, heads, d, k2, h * w)
        v = F.unfold(v, **unfold).reshape(b, heads, d, k2, h * w)
        q = q.reshape(b, heads, d, h * w)
        attn = (torch.einsum("bhdn,bhdkn->bhkn", q, k) * d**-0.5).softmax(dim=2)
        return torch.einsum("bhkn,bhdkn->bhdn", attn, v).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.attend(x) + x)
