"""References shared by the KAN tests: the textbook B-spline recursion, and whether a
graph ran the fused KAN linear function."""

from __future__ import annotations

import torch


def cox_de_boor(x: torch.Tensor, knots: torch.Tensor, order: int) -> torch.Tensor:
    """Textbook recursion on one shared knot vector: (..., in) -> (..., in, n_knots-1-order)."""
    xe = x.unsqueeze(-1)
    b = ((xe >= knots[:-1]) & (xe < knots[1:])).to(x.dtype)
    for p in range(1, order + 1):
        left = (xe - knots[: -(p + 1)]) / (knots[p:-1] - knots[: -(p + 1)]) * b[..., :-1]
        right = (knots[p + 1 :] - xe) / (knots[p + 1 :] - knots[1:-p]) * b[..., 1:]
        b = left + right
    return b


def ran_fused_kan_linear(y: torch.Tensor) -> bool:
    """Whether ``y``'s autograd graph contains the fused KAN linear function."""
    stack, seen = [y.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if type(node).__name__ == "_KANLinearFunctionBackward":
            return True
        stack.extend(nxt for nxt, _ in node.next_functions)
    return False
