"""Attention variants of the vision-transformer families (T2T-ViT, CrossViT, CvT, PVT, XCiT,
ConViT, RMT, MOAT, CAS-ViT).

Token tensors are (B, N, C); a module that needs the grid takes ``hw=(H, W)`` and expects
the N tokens in row-major order (after any prefix tokens it documents). Each docstring
says whether the module calls ``F.scaled_dot_product_attention`` (SDPA) and, when it
cannot, why.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "ClassAttention",
    "ConvProjectionAttention",
    "ConvolutionalAdditiveAttention",
    "CrossCovarianceAttention",
    "GatedPositionalSelfAttention",
    "ManhattanDecayAttention",
    "RelativePositionBiasAttention",
    "SpatialReductionAttention",
    "TokenProjectionAttention",
    "manhattan_decay_bias",
    "relative_position_bias",
    "retention_decay",
]


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, h*d) -> (B, h, N, d)."""
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(B, h, N, d) -> (B, N, h*d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _check_heads(dim: int, num_heads: int) -> None:
    if num_heads < 1 or dim % num_heads:
        raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads} (>= 1)")


class TokenProjectionAttention(nn.Module):
    """T2T-ViT's attention inside a Tokens-to-Token layer (Tokens-to-Token ViT, 2021).

    The soft-split tokens (width ``dim`` = C * k * k) are projected to a narrower ``out_dim``
    by q/k/v; the residual goes through ``v`` because input and output widths differ:
    ``out = v + proj(softmax(q k^T * scale) v)``. As in the official release the scale is
    ``(dim / num_heads) ** -0.5`` (the input width, not ``out_dim``). Uses SDPA with that
    scale passed explicitly.
    """

    def __init__(self, dim: int, out_dim: int, num_heads: int = 1, qkv_bias: bool = False) -> None:
        super().__init__()
        _check_heads(out_dim, num_heads)
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, out_dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return _merge(v) + self.proj(_merge(out))


class ClassAttention(nn.Module):
    """Attention where only the first (class) token queries all tokens (CaiT; XCiT; CrossViT).

    Returns the updated class token, shape (B, 1, C). CrossViT's cross-attention fusion is
    this module applied to [CLS of one branch, patch tokens of the other]. Uses SDPA.
    """

    def __init__(
        self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0
    ) -> None:
        super().__init__()
        _check_heads(dim, num_heads)
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = _heads(self.q(x[:, :1]), self.num_heads)
        k, v = (_heads(t, self.num_heads) for t in self.kv(x).chunk(2, dim=-1))
        drop = self.attn_drop if self.training else 0.0
        return self.proj(_merge(F.scaled_dot_product_attention(q, k, v, dropout_p=drop)))


class SpatialReductionAttention(nn.Module):
    """Spatial-reduction attention (Pyramid Vision Transformer, 2021).

    Keys and values come from the grid shrunk by a ``sr_ratio`` x ``sr_ratio`` strided
    convolution followed by LayerNorm; with ``sr_ratio=1`` it is plain multi-head
    self-attention. Tokens after ``num_prefix_tokens`` form the (H, W) grid; prefix tokens
    (a class token) are kept unreduced in the keys. Uses SDPA.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        sr_ratio: int = 1,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        _check_heads(dim, num_heads)
        if sr_ratio < 1:
            raise ValueError(f"sr_ratio must be >= 1, got {sr_ratio}")
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self, x: torch.Tensor, hw: tuple[int, int], num_prefix_tokens: int = 0
    ) -> torch.Tensor:
        b, n, c = x.shape
        q = _heads(self.q(x), self.num_heads)
        src = x
        if self.sr_ratio > 1:
            prefix, grid = x[:, :num_prefix_tokens], x[:, num_prefix_tokens:]
            grid = grid.transpose(1, 2).reshape(b, c, hw[0], hw[1])
            grid = self.norm(self.sr(grid).flatten(2).transpose(1, 2))
            src = torch.cat([prefix, grid], dim=1)
        k, v = (_heads(t, self.num_heads) for t in self.kv(src).chunk(2, dim=-1))
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        return self.proj_drop(self.proj(_merge(out)))


class ConvProjectionAttention(nn.Module):
    """Convolutional projection attention (CvT: Introducing Convolutions to ViTs, 2021).

    q, k and v are each a depthwise 3x3 convolution + BatchNorm on the token grid (stride 1
    for q, ``kv_stride`` for k and v: the squeezed projection) followed by a linear layer.
    A class token, when present, skips the convolutions. As in the official release the
    logits are scaled by ``dim_out ** -0.5`` (the full width, not the head width).
    ``conv_proj=False`` replaces the convolutions by identities, leaving the linear
    projections of plain attention. Uses SDPA with that scale passed explicitly.
    """

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        num_heads: int,
        qkv_bias: bool = True,
        kernel_size: int = 3,
        kv_stride: int = 2,
        conv_proj: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        _check_heads(dim_out, num_heads)
        self.num_heads = num_heads
        self.scale = dim_out**-0.5
        self.kv_stride = kv_stride

        def conv(stride: int) -> nn.Module:
            if not conv_proj:
                return nn.Identity()
            return nn.Sequential(
                nn.Conv2d(
                    dim_in, dim_in, kernel_size, stride, kernel_size // 2, groups=dim_in, bias=False
                ),
                nn.BatchNorm2d(dim_in),
            )

        self.conv_q, self.conv_k, self.conv_v = conv(1), conv(kv_stride), conv(kv_stride)
        self.proj_q = nn.Linear(dim_in, dim_out, bias=qkv_bias)
        self.proj_k = nn.Linear(dim_in, dim_out, bias=qkv_bias)
        self.proj_v = nn.Linear(dim_in, dim_out, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim_out, dim_out)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self, x: torch.Tensor, hw: tuple[int, int], num_prefix_tokens: int = 0
    ) -> torch.Tensor:
        b, _, c = x.shape
        prefix = x[:, :num_prefix_tokens]
        grid = x[:, num_prefix_tokens:].transpose(1, 2).reshape(b, c, hw[0], hw[1])

        def project(conv: nn.Module, lin: nn.Linear) -> torch.Tensor:
            t = conv(grid).flatten(2).transpose(1, 2)
            return _heads(lin(torch.cat([prefix, t], dim=1)), self.num_heads)

        q = project(self.conv_q, self.proj_q)
        k = project(self.conv_k, self.proj_k)
        v = project(self.conv_v, self.proj_v)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=self.scale)
        return self.proj_drop(self.proj(_merge(out)))


class CrossCovarianceAttention(nn.Module):
    """Cross-covariance attention, XCA (XCiT, 2021).

    Attention runs across channels instead of tokens: with q and k L2-normalised along
    the token axis, each head computes softmax(tau * q_hat^T k_hat) over its d x d channel
    pairs and applies it to v, so the cost is linear in the number of tokens. A learnable
    temperature tau per head. This is softmax(Q K^T) V with "sequence" = channels and
    "features" = tokens, written out: on the transposed tensors SDPA takes its math path
    on CPU (v is not contiguous along its last axis), whose guards for fully masked rows
    (``isneginf``, ``all``, ``where``) cost 5% of an xcit_tiny training step at 32x32 and
    bring nothing here. tau scales whichever is smaller: q (d x N per head) when there
    are fewer tokens than channels, else the d x d logits.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        _check_heads(dim, num_heads)
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, h, d, N): channels play the role of the sequence
        q, k, v = (_heads(t, self.num_heads).transpose(-2, -1) for t in self.qkv(x).chunk(3, -1))
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        if q.shape[-1] < q.shape[-2]:  # N < d: q is the smaller tensor
            attn = (q * self.temperature) @ k.transpose(-2, -1)
        else:
            attn = (q @ k.transpose(-2, -1)).mul_(self.temperature)
        attn = attn.softmax(-1)
        if self.training and self.attn_drop > 0:
            attn = F.dropout(attn, self.attn_drop)
        out = attn @ v
        return self.proj_drop(self.proj(_merge(out.transpose(-2, -1))))


def _relative_indices(hw: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(N, N, 3) features (dx, dy, dx^2 + dy^2) between every pair of grid positions."""
    ys, xs = torch.meshgrid(
        torch.arange(hw[0], device=device), torch.arange(hw[1], device=device), indexing="ij"
    )
    ys, xs = ys.flatten().float(), xs.flatten().float()
    dx = xs[None, :] - xs[:, None]
    dy = ys[None, :] - ys[:, None]
    return torch.stack([dx, dy, dx * dx + dy * dy], dim=-1)


class GatedPositionalSelfAttention(nn.Module):
    """Gated positional self-attention, GPSA (ConViT, 2021).

    Each head mixes a content attention softmax(q k^T / sqrt(d)) and a positional attention
    softmax(pos_proj(r_ij)) over relative offsets r_ij = (dx, dy, dx^2 + dy^2) with a learnt
    gate sigmoid(lambda_h): ``A = (1 - g) A_content + g A_pos``. Since both terms are
    row-stochastic, A V = (1 - g) SDPA(q, k, v) + g A_pos V: the content part uses SDPA, the
    positional part is a plain matmul (it has no q/k and is not of the SDPA form). For
    short sequences (at most :attr:`explicit_max_tokens`, without attention dropout) the
    blended map ``A`` is formed explicitly and multiplied with V once: at 4 tokens
    (ConViT-Tiny at 32x32) SDPA's fixed cost made the training step 0.89x timm's, whose
    GPSA is written that way; at 196 tokens SDPA is the faster form. At
    construction the positional heads are set to attend to distinct neighbours
    (``locality_strength``), and v to the identity, as in the paper's local init.
    """

    explicit_max_tokens = 64

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        locality_strength: float = 1.0,
    ) -> None:
        super().__init__()
        _check_heads(dim, num_heads)
        self.num_heads = num_heads
        self.qk = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.pos_proj = nn.Linear(3, num_heads)
        self.gating_param = nn.Parameter(torch.ones(num_heads))
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self._local_init(locality_strength)

    def _local_init(self, strength: float) -> None:
        # Heads arranged on a k x k kernel of offsets around the query (plain Python: meta-safe).
        kernel = max(1, math.isqrt(self.num_heads))
        centre = (kernel - 1) / 2
        rows = []
        for h in range(self.num_heads):
            i, j = h % kernel, h // kernel  # i: x offset, j: y offset
            dx, dy = i - centre, j - centre
            rows.append([2 * dx * strength, 2 * dy * strength, -strength])
        with torch.no_grad():
            self.pos_proj.weight.copy_(torch.tensor(rows))
            self.pos_proj.bias.zero_()
            self.v.weight.copy_(torch.eye(self.v.weight.shape[0]))
            if self.v.bias is not None:
                self.v.bias.zero_()

    def gate(self) -> torch.Tensor:
        return torch.sigmoid(self.gating_param).view(1, -1, 1, 1)

    def positional_attention(self, hw: tuple[int, int], device: torch.device) -> torch.Tensor:
        rel = _relative_indices(hw, device).to(self.pos_proj.weight.dtype)
        return self.pos_proj(rel).permute(2, 0, 1).softmax(dim=-1)[None]  # (1, h, N, N)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        q, k = (_heads(t, self.num_heads) for t in self.qk(x).chunk(2, dim=-1))
        v = _heads(self.v(x), self.num_heads)
        g = self.gate()
        drop = self.attn_drop.p if self.training else 0.0
        if x.shape[1] <= self.explicit_max_tokens and drop == 0.0:
            content = (q @ k.transpose(-2, -1)).mul_(q.shape[-1] ** -0.5).softmax(dim=-1)
            attn = torch.lerp(content, self.positional_attention(hw, x.device), g)
            return self.proj_drop(self.proj(_merge(attn @ v)))
        content = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        positional = self.attn_drop(self.positional_attention(hw, x.device)) @ v
        out = (1.0 - g) * content + g * positional
        return self.proj_drop(self.proj(_merge(out)))


def retention_decay(
    num_heads: int, initial_value: float = 2.0, heads_range: float = 4.0
) -> list[float]:
    """log(gamma_h) per head, gamma_h = 1 - 2^(-initial - range * h / heads) (RMT; RetNet)."""
    return [
        math.log(1 - 2 ** (-initial_value - heads_range * h / num_heads)) for h in range(num_heads)
    ]


def manhattan_decay_bias(
    log_gamma: torch.Tensor, hw: tuple[int, int] | int, decomposed_axis: bool = False
) -> torch.Tensor:
    """Additive bias log(gamma_h) * distance for RMT's spatial decay.

    For a 2-D grid ``hw=(H, W)`` the distance is Manhattan |dx| + |dy| and the result is
    (h, HW, HW); for one axis of length ``hw`` (an int) it is |i - j| and (h, L, L).
    """
    if isinstance(hw, int):
        idx = torch.arange(hw, device=log_gamma.device, dtype=log_gamma.dtype)
        dist = (idx[:, None] - idx[None, :]).abs()
    else:
        ys, xs = torch.meshgrid(
            torch.arange(hw[0], device=log_gamma.device, dtype=log_gamma.dtype),
            torch.arange(hw[1], device=log_gamma.device, dtype=log_gamma.dtype),
            indexing="ij",
        )
        pos = torch.stack([ys.flatten(), xs.flatten()], dim=-1)
        dist = (pos[:, None, :] - pos[None, :, :]).abs().sum(-1)
    return log_gamma.view(-1, 1, 1) * dist


def _rotate_every_two(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack([-x2, x1], dim=-1).flatten(-2)


class ManhattanDecayAttention(nn.Module):
    """Manhattan self-attention, MaSA (RMT: Retentive Networks Meet Vision Transformers, 2024).

    softmax(q k^T / sqrt(d) + log(gamma_h) * D) v, where D is the Manhattan distance between
    two grid positions and gamma_h < 1 a fixed per-head decay (``retention_decay``). With
    ``decomposed=True`` (RMT's early stages) attention runs first along each row with the
    1-D decay |dx|, then along each column with |dy|. q and k get RMT's rotary position
    shift, and a 5x5 depthwise "LePE" convolution of v is added to the output. The decay
    is an additive bias, so every attention uses SDPA with ``attn_mask`` = the bias.
    ``decay_override`` replaces the per-head log(gamma) (0 gives plain attention).

    Input and output are NHWC tensors (B, H, W, C).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        decomposed: bool = False,
        initial_value: float = 2.0,
        heads_range: float = 4.0,
        rotary: bool = True,
        lepe_kernel: int = 5,
    ) -> None:
        super().__init__()
        _check_heads(dim, num_heads)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        if self.head_dim % 2:
            raise ValueError(f"RMT attention needs an even head width, got {self.head_dim}")
        self.decomposed = decomposed
        self.rotary = rotary
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.lepe = nn.Conv2d(dim, dim, lepe_kernel, 1, lepe_kernel // 2, groups=dim)
        self.out_proj = nn.Linear(dim, dim)
        self.register_buffer(
            "log_gamma",
            torch.tensor(retention_decay(num_heads, initial_value, heads_range)),
            persistent=False,
        )
        angle = [
            1.0 / 10000 ** (i / (self.head_dim // 2 - 1 or 1)) for i in range(self.head_dim // 2)
        ]
        self.register_buffer(
            "angle", torch.tensor([a for a in angle for _ in range(2)]), persistent=False
        )
        self.decay_override: float | None = None

    def _log_gamma(self) -> torch.Tensor:
        if self.decay_override is None:
            return self.log_gamma
        return torch.full_like(self.log_gamma, self.decay_override)

    def _rotate(self, t: torch.Tensor, h: int, w: int) -> torch.Tensor:
        if not self.rotary:
            return t
        pos = torch.arange(h * w, device=t.device, dtype=t.dtype).view(h, w, 1)
        ang = pos * self.angle.to(t.dtype)
        return t * ang.cos() + _rotate_every_two(t) * ang.sin()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        nh, d = self.num_heads, self.head_dim
        q, k, v = self.q(x), self.k(x), self.v(x)
        lepe = self.lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        # (B, nh, H, W, d)
        q, k, v = (t.view(b, h, w, nh, d).permute(0, 3, 1, 2, 4) for t in (q, k, v))
        q, k = self._rotate(q, h, w), self._rotate(k, h, w)
        log_gamma = self._log_gamma().to(x.dtype)
        if self.decomposed:
            bias_w = manhattan_decay_bias(log_gamma, w)[None, :, None]  # (1, nh, 1, W, W)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias_w)  # along rows
            qt, kt, vt = (t.transpose(2, 3) for t in (q, k, out))  # (B, nh, W, H, d)
            bias_h = manhattan_decay_bias(log_gamma, h)[None, :, None]
            out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=bias_h).transpose(2, 3)
        else:
            bias = manhattan_decay_bias(log_gamma, (h, w))[None]
            flat = [t.reshape(b, nh, h * w, d) for t in (q, k, v)]
            out = F.scaled_dot_product_attention(*flat, attn_mask=bias).view(b, nh, h, w, d)
        out = out.permute(0, 2, 3, 1, 4).reshape(b, h, w, c)
        return self.out_proj(out + lepe)


class ConvolutionalAdditiveAttention(nn.Module):
    """Convolutional additive token mixer, CATM (CAS-ViT, 2024).

    q, k, v come from one 1x1 convolution. q and k each pass through a spatial operator
    (depthwise 3x3 conv, BatchNorm, ReLU, 1x1 conv to one channel, sigmoid gate) and a
    channel operator (global pool, 1x1 conv, sigmoid gate); the additive context
    ``Phi(q) + Phi(k)`` is mixed by a depthwise 3x3 conv and multiplies v, followed by a
    depthwise 3x3 projection. There is no softmax over token pairs (the similarity is a sum
    of two gated maps, linear in the number of tokens), so SDPA does not apply.

    Input and output are NCHW.
    """

    def __init__(self, dim: int, qkv_bias: bool = False, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=qkv_bias)
        self.spatial_q, self.spatial_k = self._spatial(dim), self._spatial(dim)
        self.channel_q = nn.Conv2d(dim, dim, 1, bias=False)
        self.channel_k = nn.Conv2d(dim, dim, 1, bias=False)
        self.dwc = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.proj = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.proj_drop = nn.Dropout(proj_drop)

    @staticmethod
    def _spatial(dim: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(dim, dim, 3, 1, 1, groups=dim),
            nn.BatchNorm2d(dim),
            nn.ReLU(),
            nn.Conv2d(dim, 1, 1, bias=False),
        )

    @staticmethod
    def _phi(x: torch.Tensor, spatial: nn.Module, channel: nn.Module) -> torch.Tensor:
        x = x * torch.sigmoid(spatial(x))
        return x * torch.sigmoid(channel(x.mean(dim=(2, 3), keepdim=True)))

    def context(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The additive similarity Phi(q) + Phi(k) (before the depthwise mixing)."""
        return self._phi(q, self.spatial_q, self.channel_q) + self._phi(
            k, self.spatial_k, self.channel_k
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=1)
        return self.proj_drop(self.proj(self.dwc(self.context(q, k)) * v))


def relative_position_bias(table: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Look up a (h, 2P-1, 2Q-1) relative-position table as an (h, HW, HW) attention bias.

    The table is bilinearly resized to (2H-1, 2W-1) first when the grid differs from the
    size it was made for (CoAtNet; MOAT). bias[n, i, j] = table[n, dy + H-1, dx + W-1] with
    (dy, dx) = position j minus position i.
    """
    h, w = hw
    if table.shape[-2:] != (2 * h - 1, 2 * w - 1):
        table = F.interpolate(
            table[None], size=(2 * h - 1, 2 * w - 1), mode="bilinear", align_corners=False
        )[0]
    ys, xs = torch.meshgrid(
        torch.arange(h, device=table.device), torch.arange(w, device=table.device), indexing="ij"
    )
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[None, :] - ys[:, None] + h - 1
    dx = xs[None, :] - xs[:, None] + w - 1
    return table[:, dy, dx]


class RelativePositionBiasAttention(nn.Module):
    """Multi-head self-attention with a learnt 2-D relative position bias (CoAtNet; MOAT).

    Heads of width ``head_dim``; q, k, v and output projections with bias; a per-head table
    of (2P-1) x (2P-1) relative offsets for a ``table_size`` = P grid, resized for other
    grids. softmax(q k^T / sqrt(d) + B) v, so it uses SDPA with ``attn_mask`` = B. Input and
    output are NHWC.
    """

    def __init__(self, dim: int, head_dim: int = 32, table_size: int | None = 7) -> None:
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"dim {dim} must be a multiple of head_dim {head_dim}")
        self.num_heads = dim // head_dim
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_table = (
            nn.Parameter(torch.zeros(self.num_heads, 2 * table_size - 1, 2 * table_size - 1))
            if table_size
            else None
        )
        if self.rel_table is not None:
            nn.init.trunc_normal_(self.rel_table, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        t = x.reshape(b, h * w, c)
        q, k, v = (_heads(f(t), self.num_heads) for f in (self.q, self.k, self.v))
        bias = None
        if self.rel_table is not None:
            bias = relative_position_bias(self.rel_table, (h, w)).to(x.dtype)[None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(_merge(out)).reshape(b, h, w, c)
