"""Multi-scale retention (*Retentive Network*, Sun et al., 2023), as used by *ViR: Vision
Retention Networks* (Hatamizadeh et al., 2023).

Per head ``h`` with decay ``gamma_h = 1 - 2**(-5 - h)`` and rotary phases on queries and
keys, retention has three equal forms:

- parallel: ``(Q K^T * D) V`` with ``D[n, m] = gamma**(n - m)`` for ``n >= m`` else 0;
- recurrent: ``S_n = gamma * S_{n-1} + K_n^T V_n``, ``o_n = Q_n S_n``;
- chunkwise: parallel inside chunks, recurrent across them.

Heads are normalised by a per-head GroupNorm and gated by ``swish(X W_G)``. RetNet also
rescales scores per row; a per-token, per-head scale cancels in the GroupNorm that
follows (up to its epsilon), so archbench leaves it out and all three forms agree exactly
(``tests/layers/test_retention.py``). Tokens are (B, N, C).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["MultiScaleRetention", "retention_decays"]

MODES = ("parallel", "recurrent", "chunkwise")


def retention_decays(num_heads: int) -> torch.Tensor:
    """RetNet's per-head decays ``1 - 2**(-5 - h)`` as log values (float64)."""
    h = torch.arange(num_heads, dtype=torch.float64)
    return torch.log1p(-torch.pow(2.0, -5.0 - h))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of features (x0, x1) by the position's angle (rotary phases)."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


class MultiScaleRetention(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        value_factor: int = 1,
        qkv_bias: bool = False,
        mode: str = "parallel",
        chunk_size: int = 64,
    ) -> None:
        super().__init__()
        if dim % num_heads or (dim // num_heads) % 2:
            raise ValueError(
                f"dim {dim} must split into {num_heads} heads of even width (rotary phases)"
            )
        if mode not in MODES:
            raise ValueError(f"unknown retention mode {mode!r}; choose one of {MODES}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.v_dim = dim * value_factor
        self.mode = mode
        self.chunk_size = chunk_size
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, self.v_dim, bias=qkv_bias)
        self.g = nn.Linear(dim, self.v_dim, bias=qkv_bias)
        self.group_norm = nn.GroupNorm(num_heads, self.v_dim, affine=False)
        self.proj = nn.Linear(self.v_dim, dim, bias=qkv_bias)
        freqs = 1.0 / 10000 ** torch.linspace(0, 1, self.head_dim // 2)
        self.register_buffer("freqs", freqs, persistent=False)
        self.register_buffer("log_gamma", retention_decays(num_heads).float(), persistent=False)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        h, d = self.num_heads, self.head_dim
        q = self.q(x).view(b, n, h, d).transpose(1, 2)
        k = self.k(x).view(b, n, h, d).transpose(1, 2) * d**-0.5
        v = self.v(x).view(b, n, h, -1).transpose(1, 2)
        angle = torch.arange(n, device=x.device, dtype=torch.float32)[:, None] * self.freqs
        cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
        return _rotate(q, cos, sin), _rotate(k, cos, sin), v

    def _decay_mask(self, n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        idx = torch.arange(n, device=device)
        diff = (idx[:, None] - idx[None, :]).to(torch.float32)
        mask = torch.exp(self.log_gamma.view(-1, 1, 1) * diff.clamp(min=0))
        return (mask * (diff >= 0)).to(dtype)  # (H, N, N)

    def parallel(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scores = (q @ k.transpose(-1, -2)) * self._decay_mask(q.shape[2], q.device, q.dtype)
        return scores @ v

    def recurrent(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        gamma = self.log_gamma.exp().to(q.dtype).view(1, -1, 1, 1)
        state = q.new_zeros(q.shape[0], q.shape[1], q.shape[3], v.shape[3])
        outs = []
        for q_t, k_t, v_t in zip(q.unbind(2), k.unbind(2), v.unbind(2)):
            state = gamma * state + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)
            outs.append((q_t.unsqueeze(-2) @ state).squeeze(-2))
        return torch.stack(outs, dim=2)

    def chunkwise(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n, c = q.shape[2], self.chunk_size
        log_g = self.log_gamma.to(q.dtype).view(1, -1, 1, 1)
        state = q.new_zeros(q.shape[0], q.shape[1], q.shape[3], v.shape[3])
        outs = []
        for start in range(0, n, c):
            qc, kc, vc = (t[:, :, start : start + c] for t in (q, k, v))
            m = qc.shape[2]
            pos = torch.arange(1, m + 1, device=q.device, dtype=q.dtype).view(1, 1, -1, 1)
            inner = self.parallel(qc, kc, vc)
            cross = (qc * torch.exp(log_g * pos)) @ state  # decays gamma**(i+1) into the chunk
            outs.append(inner + cross)
            # state after the chunk: gamma**m * S + sum_j gamma**(m-1-j) k_j^T v_j
            k_decayed = kc * torch.exp(log_g * (m - pos))
            state = torch.exp(log_g * m) * state + k_decayed.transpose(-1, -2) @ vc
        return torch.cat(outs, dim=2)

    def forward(self, x: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        mode = mode or self.mode
        if mode not in MODES:
            raise ValueError(f"unknown retention mode {mode!r}; choose one of {MODES}")
        b, n, _ = x.shape
        q, k, v = self._qkv(x)
        o = getattr(self, mode)(q, k, v)  # (B, H, N, Dv)
        o = o.transpose(1, 2).reshape(b * n, self.v_dim)
        o = self.group_norm(o).view(b, n, self.v_dim)
        return self.proj(F.silu(self.g(x)) * o)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, mode={self.mode!r}, chunk_size={self.chunk_size}"
