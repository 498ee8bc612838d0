"""Class activation maps for any registered model, batched.

Methods (one call, ``explain(model, images, targets=None, method="gradcam", layer=None)``):

- ``gradcam``   Grad-CAM (Selvaraju et al.): channel weights = spatial mean of gradients.
- ``gradcam++`` Grad-CAM++ (Chattopadhay et al.): w_k = sum_ij alpha_ij relu(g_ij) with the
  paper's closed form alpha_ij = g_ij^2 / (2 g_ij^2 + sum_ab A_ab g_ij^3) (exponential
  score assumption), without a stabilising epsilon: pytorch-grad-cam adds 1e-6 to the
  denominator, which shrinks alpha wherever |g| is not well above 1e-3 (the usual size of
  gradients at a network's last layers) and is what makes it differ from the paper.
  alpha is 0 where the denominator is not positive: with g > 0 (the only places relu(g)
  keeps) it is positive whenever the activations are non-negative, as the derivation
  assumes; for layers with negative activations (LayerNorm outputs, tokens) it can
  vanish or change sign, where the closed form does not hold.
- ``xgradcam``  XGrad-CAM (Fu et al.): weights = sum(A * G) / sum(A) per channel.
- ``hirescam``  HiResCAM (Draelos & Carin): element-wise gradient x activation, summed
  over channels; equals CAM exactly on a GAP + linear head.
- ``layercam``  Layer-CAM (Jiang et al.): relu(gradient) x activation, summed over channels.
- ``eigencam``  Eigen-CAM (Muhammad & Yeasin): projection of the activations on their
  first principal component (SVD of the positions x channels matrix after subtracting
  each channel's mean over positions, as pytorch-grad-cam does; without centring the
  first singular vector is the mean direction). The SVD's sign is arbitrary: it is
  chosen so that the map correlates positively with the activations' norm per position.
  Gradient-free, class-agnostic.
- ``scorecam``  Score-CAM (Wang et al.): each upsampled, [0, 1]-normalised activation map
  masks the input; the target's softmax scores on the masked inputs, softmax-normalised
  across channels, weight the maps.
- ``ablationcam`` Ablation-CAM (Desai & Ramaswamy): weight of a channel = relative drop of
  the target score when that channel is zeroed at the layer.

Gradient methods take one forward and one backward pass per chunk of images (per target
column); the forward runs without autograd up to the explained layer, so the backward
goes from the logits to that layer only (no weight gradients, no earlier layers).
Score-CAM and Ablation-CAM run their masked passes in batches of ``batch_size``, with
the masked inputs of several images in one forward. Images go through in chunks of
``chunk_size`` (by default about ``CHUNK_PIXELS`` input pixels per chunk: at 224x224 a
whole batch in one pass is slower than one image at a time on a CPU).
The model is used in eval mode. Token layers are turned into maps by the model's own
``tokens_to_map`` (class and distillation tokens dropped).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "CHUNK_PIXELS",
    "GRADIENT_METHODS",
    "METHODS",
    "default_chunk_size",
    "eigen_projection",
    "explain",
    "gradcampp_alpha",
    "resolve_layer",
]

GRADIENT_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam")
METHODS = GRADIENT_METHODS + ("eigencam", "scorecam", "ablationcam")
_EPS = 1e-7


def resolve_layer(model: nn.Module, layer: str | nn.Module | None) -> nn.Module:
    """The module to explain: ``layer`` (a module or its path) or the model's ``cam_target``."""
    if isinstance(layer, nn.Module):
        return layer
    path = layer if layer is not None else getattr(model, "cam_target", None)
    if not path:
        raise ValueError(
            f"{type(model).__name__} has no cam_target; pass layer= a module or its path "
            "(see model.named_modules())"
        )
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ValueError(f"{type(model).__name__} has no submodule {path!r}") from None


def _first_tensor(out: object) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"the explained layer returns {type(out).__name__}, not a tensor")


def _to_map(model: nn.Module, t: torch.Tensor) -> torch.Tensor:
    if t.ndim == 4:
        return t
    if t.ndim == 3 and hasattr(model, "tokens_to_map"):
        return model.tokens_to_map(t)
    raise ValueError(
        f"cannot turn a layer output of shape {tuple(t.shape)} into a B x C x H x W map"
    )


@contextmanager
def _capture(layer: nn.Module):
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _i, out):
        store["out"] = _first_tensor(out)

    handle = layer.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def _targets(logits: torch.Tensor, targets: torch.Tensor | int | list | None) -> torch.Tensor:
    """Targets as a (B, T) long tensor; None means the predicted class."""
    b, num_classes = logits.shape
    if targets is None:
        t = logits.argmax(1, keepdim=True)
    else:
        t = torch.as_tensor(targets, dtype=torch.long, device=logits.device)
        if t.ndim == 0:
            t = t.expand(b)
        if t.ndim == 1:
            if t.shape[0] != b:
                raise ValueError(f"targets has {t.shape[0]} entries for a batch of {b} images")
            t = t[:, None]
        if t.ndim != 2 or t.shape[0] != b:
            raise ValueError(f"targets must be an int, (B,) or (B, T); got shape {tuple(t.shape)}")
    if (t < 0).any() or (t >= num_classes).any():
        raise ValueError(f"targets must be class indices in [0, {num_classes - 1}]")
    return t


def _weights_gradcam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return (g.mean((2, 3), keepdim=True) * a).sum(1)


def gradcampp_alpha(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++'s alpha (Eq. 19): g^2 / (2 g^2 + sum_ab A_ab g^3), 0 where that
    denominator is not positive (including g = 0). No epsilon is added."""
    g2 = g.pow(2)
    denom = 2 * g2 + a.sum((2, 3), keepdim=True) * g2 * g
    ok = denom > 0
    return torch.where(ok, g2 / torch.where(ok, denom, torch.ones_like(denom)), 0.0)


def _weights_gradcampp(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    w = (gradcampp_alpha(a, g) * F.relu(g)).sum((2, 3), keepdim=True)
    return (w * a).sum(1)


def _weights_xgradcam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    w = (a * g).sum((2, 3), keepdim=True) / (a.sum((2, 3), keepdim=True) + _EPS)
    return (w * a).sum(1)


def _hirescam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return (g * a).sum(1)


def _layercam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return (F.relu(g) * a).sum(1)


_GRAD_FNS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "gradcam": _weights_gradcam,
    "gradcam++": _weights_gradcampp,
    "xgradcam": _weights_xgradcam,
    "hirescam": _hirescam,
    "layercam": _layercam,
}


def eigen_projection(a: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h, w): the first principal component score of every position.

    The positions x channels matrix is centred (each channel's mean over positions
    removed) and projected on its first right singular vector; the sign makes the map
    correlate positively with the activations' L2 norm per position.
    """
    b, c, h, w = a.shape
    m = a.reshape(b, c, h * w).transpose(1, 2).float()  # B x positions x channels
    m = m - m.mean(1, keepdim=True)
    _, _, vh = torch.linalg.svd(m, full_matrices=False)
    proj = (m @ vh[:, 0, :].unsqueeze(-1)).squeeze(-1)  # B x positions
    energy = a.reshape(b, c, h * w).float().norm(dim=1)
    energy = energy - energy.mean(1, keepdim=True)
    sign = torch.where((proj * energy).sum(1, keepdim=True) < 0, -1.0, 1.0)
    return (proj * sign).view(b, h, w)


def _normalize(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(-2)
    lo = flat.amin(-1, keepdim=True)
    hi = flat.amax(-1, keepdim=True)
    return ((flat - lo) / (hi - lo).clamp_min(_EPS)).view_as(maps)


@contextmanager
def _graph_from(layer: nn.Module):
    """Run the model without autograd up to ``layer`` and with it from there on.

    The layer's output is replaced by a detached copy that requires grad, and grad mode
    is switched on for the rest of the forward: the backward then stops at the layer
    instead of going through (and keeping the activations of) every earlier layer or
    computing weight gradients. The gradient with respect to the layer's output is the
    same. Works for frozen models too.
    """
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _i, out):
        leaf = _first_tensor(out).detach().requires_grad_(True)
        torch.set_grad_enabled(True)  # restored when the surrounding no_grad exits
        store["out"] = leaf
        if isinstance(out, (tuple, list)):
            return type(out)([leaf, *out[1:]])
        return leaf

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            yield store
    finally:
        handle.remove()


def _gradient_maps(
    model: nn.Module, layer: nn.Module, x: torch.Tensor, targets, method: str
) -> tuple[torch.Tensor, torch.Tensor]:
    fn = _GRAD_FNS[method]
    with _graph_from(layer) as store:
        logits = model(x.detach())
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        t = _targets(logits, targets)
        if "out" not in store:
            raise ValueError("the explained layer was not called in the model's forward")
        act = store["out"]
        maps = []
        for j in range(t.shape[1]):
            score = logits.gather(1, t[:, j : j + 1]).sum()
            (grad,) = torch.autograd.grad(score, act, retain_graph=j < t.shape[1] - 1)
            a = _to_map(model, act.detach())
            g = _to_map(model, grad)
            maps.append(F.relu(fn(a.float(), g.float())))
    return torch.stack(maps, 1), t


def _activation(
    model: nn.Module, layer: nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad(), _capture(layer) as store:
        logits = model(x)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
    return logits, store["out"]


def _score_cam(model, layer, x, targets, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    logits, out = _activation(model, layer, x)
    t = _targets(logits, targets)
    a = _to_map(model, out).float()
    b, c = a.shape[:2]
    masks = _normalize(F.interpolate(a, size=x.shape[-2:], mode="bilinear", align_corners=False))
    scores = torch.empty(b, c, t.shape[1])
    with torch.no_grad():
        # all (image, channel) masked inputs, run in batches
        flat_idx = torch.arange(b * c)
        for start in range(0, b * c, batch_size):
            idx = flat_idx[start : start + batch_size]
            img, ch = idx // c, idx % c
            masked = x[img] * masks[img, ch].unsqueeze(1)
            out_logits = model(masked)
            if isinstance(out_logits, (tuple, list)):
                out_logits = out_logits[0]
            probs = out_logits.float().softmax(-1)
            scores[img, ch] = probs.gather(1, t[img]).cpu()
    weights = scores.softmax(dim=1).to(a.device)  # softmax across channels, per target
    maps = torch.einsum("bct,bchw->bthw", weights, a)
    return F.relu(maps), t


def _ablation_cam(model, layer, x, targets, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    logits, out = _activation(model, layer, x)
    t = _targets(logits, targets)
    a = _to_map(model, out).float()
    b, c = a.shape[:2]
    base = logits.float().gather(1, t)  # B x T
    prefix = getattr(model, "num_prefix_tokens", 0) if out.ndim == 3 else 0
    state: dict[str, torch.Tensor] = {}

    def ablate(_m, _i, o):
        ten = _first_tensor(o)
        keep = state["keep"].to(ten.dtype)
        if ten.ndim == 4:
            ablated = ten * keep[:, :, None, None]
        else:
            ablated = ten.clone()
            ablated[:, prefix:] = ten[:, prefix:] * keep[:, None, :]
        if isinstance(o, (tuple, list)):
            return type(o)([ablated, *o[1:]])
        return ablated

    drops = torch.empty(b, c, t.shape[1])
    handle = layer.register_forward_hook(ablate)
    try:
        with torch.no_grad():
            flat_idx = torch.arange(b * c)
            for start in range(0, b * c, batch_size):
                idx = flat_idx[start : start + batch_size]
                img, ch = idx // c, idx % c
                keep = torch.ones(len(idx), c, device=x.device)
                keep[torch.arange(len(idx)), ch.to(x.device)] = 0
                state["keep"] = keep
                o = model(x[img])
                if isinstance(o, (tuple, list)):
                    o = o[0]
                score = o.float().gather(1, t[img])
                drops[img, ch] = ((base[img] - score) / (base[img].abs() + _EPS)).cpu()
    finally:
        handle.remove()
    maps = torch.einsum("bct,bchw->bthw", drops.to(a.device), a)
    return F.relu(maps), t


def explain(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | int | list | None = None,
    method: str = "gradcam",
    layer: str | nn.Module | None = None,
    upsample: bool = True,
    normalize: bool = True,
    batch_size: int = 64,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """One saliency map per image and target.

    ``images``: (B, C, H, W), already normalised as the model expects. ``targets``: None
    (predicted class), an int, (B,) or (B, T) class indices. Returns (B, H, W) maps for
    None / int / (B,) targets and (B, T, H, W) for (B, T); each map in [0, 1] when
    ``normalize`` and at input resolution when ``upsample`` (bilinear); otherwise the raw
    map at the layer's resolution (after ReLU).

    The images are explained ``chunk_size`` at a time (None: ``default_chunk_size(H, W)``,
    about ``CHUNK_PIXELS`` input pixels per chunk, so that a chunk's activations stay
    small enough to be faster than explaining one image at a time). ``batch_size`` is how
    many masked inputs (Score-CAM) or ablated copies (Ablation-CAM) go through the model
    in one forward; those of several images share a forward.
    """
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {shape}")
    for key, value in (("batch_size", batch_size), ("chunk_size", chunk_size)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(
                f"{key} must be a positive integer (or None for chunk_size), got {value!r}"
            )
    b = images.shape[0]
    if isinstance(targets, (torch.Tensor, list)):
        t_all = torch.as_tensor(targets)
        if t_all.ndim >= 1 and t_all.shape[0] != b:
            raise ValueError(f"targets has {t_all.shape[0]} entries for a batch of {b} images")
    layer = resolve_layer(model, layer)
    chunk = chunk_size or default_chunk_size(*images.shape[-2:])
    if chunk >= b:
        maps = _explain_chunk(
            model, images, targets, method, layer, upsample, normalize, batch_size
        )
    else:
        parts = []
        for start in range(0, b, chunk):
            part_targets = targets
            if isinstance(targets, (torch.Tensor, list)) and torch.as_tensor(targets).ndim >= 1:
                part_targets = torch.as_tensor(targets)[start : start + chunk]
            parts.append(
                _explain_chunk(
                    model,
                    images[start : start + chunk],
                    part_targets,
                    method,
                    layer,
                    upsample,
                    normalize,
                    batch_size,
                )
            )
        maps = torch.cat(parts)
    squeeze = (
        targets is None
        or not isinstance(targets, (torch.Tensor, list))
        or torch.as_tensor(targets).ndim < 2
    )
    return maps[:, 0] if squeeze else maps


# Input pixels per chunk of images (see ``explain``), from benchmarks/explain_speed.py on
# a 2-core CPU (1 thread, resnet_pico, Grad-CAM): at 32x32 one pass over 64 images is
# many times faster than 64 single-image calls (per-call overhead dominates), while at
# 224x224 16 images took 1.13x (chunks of 2), 1.28x (4), 1.45x (8) and 2.1x (16) the
# per-image loop (activations far beyond the caches; every chunk allocates them anew),
# and chunks of 1 matched it. 64 images of 32x32 per chunk, one of 224x224.
CHUNK_PIXELS = 64 * 32 * 32


def default_chunk_size(height: int, width: int) -> int:
    """Images per chunk for ``explain`` at this input size: ``CHUNK_PIXELS / (H * W)``."""
    return max(1, CHUNK_PIXELS // (height * width))


def _explain_chunk(
    model, images, targets, method, layer, upsample, normalize, batch_size
) -> torch.Tensor:
    """(B, T, H', W') maps of one chunk of images."""
    target_layer = resolve_layer(model, layer)
    was_training = model.training
    model.eval()
    try:
        if method in GRADIENT_METHODS:
            maps, t = _gradient_maps(model, target_layer, images, targets, method)
        elif method == "eigencam":
            logits, out = _activation(model, target_layer, images)
            t = _targets(logits, targets)
            maps = (
                F.relu(eigen_projection(_to_map(model, out)))
                .unsqueeze(1)
                .expand(-1, t.shape[1], -1, -1)
            )
        elif method == "scorecam":
            maps, t = _score_cam(model, target_layer, images, targets, batch_size)
        else:
            maps, t = _ablation_cam(model, target_layer, images, targets, batch_size)
    finally:
        model.train(was_training)
    if upsample:
        b, n = maps.shape[:2]
        maps = F.interpolate(
            maps.reshape(b * n, 1, *maps.shape[-2:]),
            size=images.shape[-2:],
            mode="bilinear",
            align_corners=False,
        ).view(b, n, *images.shape[-2:])
    if normalize:
        maps = _normalize(maps)
    return maps.detach()
