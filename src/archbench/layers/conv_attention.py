"""Self-attention with a relative-position bias, initialised to perform a convolution.

*Can Vision Transformers Perform Convolution?* (Li, Chen, He & Hsieh, 2021) proves that a
multi-head self-attention layer with a relative positional encoding can express any
convolution of the token grid, and uses the construction as an initialisation that gives
a ViT the convolutional bias it lacks in low-data regimes. The attention logits of head h
between query token i and key token j are

    s_h(i, j) = q_i . k_j / sqrt(d) + b_h[pos_j - pos_i],

with ``b_h`` a learned table over relative grid offsets. The construction gives each of
k^2 heads one offset delta_h of the k x k window: its query projection is zero (no
content term) and ``b_h`` is large at delta_h and zero elsewhere, so head h attends (up to
exp(-logit)) to the token at ``pos_i + delta_h`` only. The layer output is then

    y_i = sum_h O_h V_h x_{i + delta_h} + (b_O + sum_h O_h b_{V,h}),

a convolution whose weight at offset delta_h is ``O_h V_h`` (value projection of head h
followed by its slice of the output projection): one head per kernel offset, hence the
paper's requirement of at least k^2 heads. Heads beyond k^2 get a zero output slice, so
they contribute nothing until training gives them a role.

``RelPosAttention`` is ``Attention`` plus the per-head table (prefix tokens such as the
class token get no position bias); ``init_as_convolution`` applies the construction.
Deviations: the paper's construction takes the hard-attention limit (logit -> infinity);
a finite ``logit`` (default 10) keeps the attention trainable, leaving an error of order
``N exp(-logit)`` per output, and an offset that falls outside the grid (near the
borders) has no token to attend to, so only tokens whose whole k x k window lies inside
the grid reproduce the convolution exactly. The query projection starts at zero while
the key projection keeps its random initialisation, so both receive gradients after the
first step. Only the token-grid form is implemented (the paper's further result, that
patch tokens let fewer heads emulate a pixel-level convolution, is not).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .attention import Attention

__all__ = ["RelPosAttention", "conv_offsets", "relative_position_index"]


def relative_position_index(grid_size: tuple[int, int]) -> torch.Tensor:
    """(N, N) index into a (2H-1)(2W-1) table of the offset ``pos_j - pos_i``, row-major grid."""
    gh, gw = grid_size
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[None, :] - ys[:, None] + gh - 1
    dx = xs[None, :] - xs[:, None] + gw - 1
    return dy * (2 * gw - 1) + dx


def conv_offsets(kernel_size: int) -> list[tuple[int, int]]:
    """The (dy, dx) offset head h emulates: row-major over the k x k window, as in conv2d."""
    half = kernel_size // 2
    return [(a - half, b - half) for a in range(kernel_size) for b in range(kernel_size)]


class RelPosAttention(Attention):
    """Multi-head self-attention with a learned relative-position bias per head.

    Tokens are ``num_prefix_tokens`` prefix tokens followed by the ``grid_size`` patch grid
    in row-major order.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid_size: tuple[int, int],
        num_prefix_tokens: int = 1,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__(
            dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop
        )
        gh, gw = (int(s) for s in grid_size)
        self.grid_size = (gh, gw)
        self.num_prefix_tokens = num_prefix_tokens
        self.rel_pos_bias = nn.Parameter(torch.zeros(num_heads, (2 * gh - 1) * (2 * gw - 1)))
        self.register_buffer("rel_index", relative_position_index((gh, gw)), persistent=False)

    @classmethod
    def from_attention(
        cls, attn: Attention, grid_size: tuple[int, int], num_prefix_tokens: int
    ) -> RelPosAttention:
        """A ``RelPosAttention`` with the options (not the weights) of ``attn``."""
        return cls(
            attn.proj.in_features,
            attn.num_heads,
            grid_size,
            num_prefix_tokens,
            qkv_bias=attn.qkv.bias is not None,
            attn_drop=attn.attn_drop,
            proj_drop=attn.proj_drop.p,
        )

    def position_bias(self) -> torch.Tensor:
        """(heads, N, N) additive logits; zero on rows and columns of prefix tokens."""
        n_grid = self.rel_index.shape[0]
        npt = self.num_prefix_tokens
        grid = self.rel_pos_bias[:, self.rel_index.reshape(-1)].reshape(-1, n_grid, n_grid)
        bias = grid.new_zeros(self.num_heads, npt + n_grid, npt + n_grid)
        bias[:, npt:, npt:] = grid
        return bias

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        expected = self.num_prefix_tokens + self.rel_index.shape[0]
        if x.ndim != 3 or x.shape[1] != expected:
            raise ValueError(
                f"RelPosAttention was built for {self.num_prefix_tokens} prefix + "
                f"{self.grid_size[0]}x{self.grid_size[1]} grid tokens ({expected}), "
                f"got tokens of shape {tuple(x.shape)}"
            )
        bias = self.position_bias().to(x.dtype)
        if attn_bias is not None:
            bias = bias + attn_bias
        return super().forward(x, attn_bias=bias)

    @torch.no_grad()
    def init_as_convolution(self, kernel_size: int = 3, logit: float = 10.0) -> None:
        """Apply the construction: head h attends to offset ``conv_offsets(k)[h]``."""
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"the emulated kernel_size must be odd and >= 1, got {kernel_size}")
        needed = kernel_size**2
        if self.num_heads < needed:
            raise ValueError(
                f"emulating a {kernel_size}x{kernel_size} convolution needs one head per "
                f"kernel offset: num_heads >= {needed}, got {self.num_heads}; use more heads "
                f"or a smaller kernel"
            )
        gh, gw = self.grid_size
        if kernel_size > min(gh, gw):
            raise ValueError(
                f"a {kernel_size}x{kernel_size} window does not fit the {gh}x{gw} token grid"
            )
        inner = self.num_heads * self.head_dim
        # no content term: zero query projection (and query bias)
        self.qkv.weight[:inner].zero_()
        if self.qkv.bias is not None:
            self.qkv.bias[:inner].zero_()
        self.rel_pos_bias.zero_()
        for head, (dy, dx) in enumerate(conv_offsets(kernel_size)):
            self.rel_pos_bias[head, (dy + gh - 1) * (2 * gw - 1) + (dx + gw - 1)] = logit
        # heads without an offset contribute nothing at first
        self.proj.weight[:, needed * self.head_dim :].zero_()
