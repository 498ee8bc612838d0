"""Mixture-of-experts feed-forward layer with top-k routing (GShard / Switch / WideNet).

Token tensors are (..., C). A linear router (no bias) scores the ``num_experts``
expert MLPs for every token; during training Gaussian noise of standard deviation
``noise_std`` (default 1 / num_experts, as in WideNet) is added to the logits. Each token
goes to its ``top_k`` experts and the outputs are summed, weighted by the router's softmax
probabilities for those experts (not renormalized). In training each expert accepts at
most ``capacity_factor * top_k * tokens / num_experts`` tokens, first come first served;
the overflow is dropped (its MoE output is zero, the residual carries it).

After every forward the layer holds ``aux_loss``, the load-balancing loss
``num_experts**2 * mean_e(fraction of routed assignments to e * mean router probability
of e)``, which is 1 for a perfectly uniform router; models add it, weighted, to the task
loss.

Dispatch is sparse (each expert runs only on its tokens). On the ``meta`` device, where
token selection has no kernel, each expert runs on a balanced share (top_k / num_experts)
of the tokens: the shapes are right and FLOP counters see the routed compute.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .mlp import Mlp

__all__ = ["MoEMlp", "load_balancing_loss"]


def load_balancing_loss(probs: torch.Tensor, assigned: torch.Tensor) -> torch.Tensor:
    """E^2 * mean_e(density_e * proxy_e): probs (T, E) softmax, assigned (T, E) in {0, 1}/k."""
    num_experts = probs.shape[-1]
    density = assigned.float().mean(dim=0)
    proxy = probs.float().mean(dim=0)
    return (density * proxy).mean() * num_experts**2


class MoEMlp(nn.Module):
    """Top-k routed mixture of ``num_experts`` MLPs (dim -> hidden -> dim)."""

    def __init__(
        self,
        dim: int,
        hidden_features: int,
        num_experts: int = 4,
        top_k: int = 2,
        capacity_factor: float | None = 1.2,
        noise_std: float | None = None,
        act: str = "gelu",
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        if capacity_factor is not None and capacity_factor <= 0:
            raise ValueError(f"capacity_factor must be positive or None, got {capacity_factor}")
        self.num_experts = num_experts
        self.top_k = top_k
        self.capacity_factor = capacity_factor
        self.noise_std = 1.0 / num_experts if noise_std is None else noise_std
        self.router = nn.Linear(dim, num_experts, bias=False)
        self.experts = nn.ModuleList(
            Mlp(dim, hidden_features, act=act, drop=drop) for _ in range(num_experts)
        )
        self.aux_loss: torch.Tensor = torch.zeros(())

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (T, C) -> gates (T, k), expert indices (T, k), router probabilities (T, E)."""
        logits = self.router(x)
        if self.training and self.noise_std > 0:
            logits = logits + torch.randn_like(logits) * self.noise_std
        probs = logits.softmax(dim=-1)
        gates, index = probs.topk(self.top_k, dim=-1)
        return gates, index, probs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        tokens = flat.shape[0]
        gates, index, probs = self.route(flat)
        assigned = torch.zeros_like(probs).scatter_(1, index, 1.0)  # (T, E)
        self.aux_loss = load_balancing_loss(probs, assigned / self.top_k)

        if self.training and self.capacity_factor is not None:
            capacity = max(1, int(self.capacity_factor * self.top_k * tokens / self.num_experts))
            position = assigned.cumsum(dim=0) * assigned  # 1-based arrival order per expert
            kept = (position <= capacity) & (assigned > 0)
            gates = gates * kept.gather(1, index).to(gates.dtype)

        out = torch.zeros_like(flat)
        if flat.is_meta:
            # shapes only: each expert takes its balanced share of the routed tokens, so
            # that FLOP counts on meta match the routed (not the dense) compute
            share = min(tokens, -(-tokens * self.top_k // self.num_experts))
            for e, expert in enumerate(self.experts):
                weight = (gates * (index == e).to(gates.dtype)).sum(dim=-1, keepdim=True)
                out = out.index_add(
                    0,
                    torch.arange(share, device=flat.device),
                    weight[:share] * expert(flat[:share]),
                )
            return out.reshape(shape)
        for e, expert in enumerate(self.experts):
            token, slot = torch.nonzero((index == e) & (gates > 0), as_tuple=True)
            if token.numel() == 0:
                continue
            y = expert(flat.index_select(0, token)) * gates[token, slot].unsqueeze(-1)
            out = out.index_add(0, token, y.to(out.dtype))
        return out.reshape(shape)
