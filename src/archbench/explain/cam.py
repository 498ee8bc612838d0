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
  masks the input (a constant map, whose normalisation is 0/0, gives a zero mask); the
  target's softmax scores on the masked inputs, softmax-normalised across channels,
  weight the maps.
- ``ablationcam`` Ablation-CAM (Desai & Ramaswamy): weight of a channel = relative drop of
  the target score when that channel is zeroed at the layer.

Gradient methods take one forward and one backward pass per chunk of images (per target
column); the forward runs without autograd up to the explained layer, so the backward
goes from the logits to that layer only (no weight gradients, no earlier layers).
Score-CAM and Ablation-CAM run their masked passes in forwards of ``batch_size``, with
the masked inputs of several images in one forward; constant maps (Score-CAM: a zero
mask, the same input for every image) and all-zero channels (Ablation-CAM: ablating
them changes nothing) need no pass of their own. Images go through in chunks of
``chunk_size``. Both sizes default to the number of images whose largest module output
fits ``ACTIVATION_BYTES``, measured on the call's first forward: the model's forward is
almost all of a CAM's time, and on a CPU a pass whose activations outgrow the caches and
the allocator's heap costs more per image than single images do (at 224x224 a whole batch
in one pass is slower than a loop over the images). An automatic chunk then doubles while
the timed passes get faster per image (``TUNE_MARGIN``), so it settles on the fastest
pass size the model shows, never below the rule's. Upsampling and normalisation run
once over all maps of the call.
The model is used in eval mode. Token layers are turned into maps by the model's own
``tokens_to_map`` (class and distillation tokens dropped).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "ACTIVATION_BYTES",
    "GRADIENT_METHODS",
    "METHODS",
    "eigen_projection",
    "explain",
    "gradcampp_alpha",
    "images_per_pass",
    "largest_output",
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
    """Min-max normalise every map over its last two dimensions, all maps in one pass."""
    flat = maps.flatten(-2)
    lo, hi = torch.aminmax(flat, dim=-1, keepdim=True)
    return (flat - lo).div_((hi - lo).clamp_min(_EPS)).view_as(maps)


# Bytes of the largest module output that one pass of images through the model may
# produce (4 MiB). From a profile and benchmarks/explain_speed.py on a 2-core AMD EPYC
# (32 MiB L3 shared with other jobs, 1 MiB L2): the explained model's forward is over 97%
# of a CAM's time (Grad-CAM's own arithmetic is about 1 MFLOP per image at 224x224, under
# 0.1% of resnet_pico's 1.6 GFLOP forward), and the forward's cost per image rises once
# one pass's activations outgrow the caches and glibc's heap, which then maps and unmaps
# them for every pass (resnet_pico at 224x224, largest output 3.1 MiB per image: 0 page
# faults per pass of 1-2 images, 210,000 for 16; batch norm 4.8x and convolutions 1.4x
# slower per image; 16 images in one pass 2.3x the time of 16 single-image passes). At
# 224x224 single images were the fastest passes for resnet_pico at 1 and 2 threads, while
# resnet18 (whose 3 MiB outputs are only its stem's) gained 1.1-1.4x from 2-8 images per
# pass, which this rule does not see (pass chunk_size); at 32x32 resnet_pico ran fastest
# per image at 32-64 images per pass (2-4 MiB) and slower from 128.
ACTIVATION_BYTES = 4 * 2**20


def images_per_pass(largest_output_bytes: int) -> int:
    """Images per pass for a model whose largest module output is ``largest_output_bytes``
    per image: ``ACTIVATION_BYTES // largest_output_bytes``, at least 1."""
    return max(1, ACTIVATION_BYTES // max(1, int(largest_output_bytes)))


# Largest module output per image, by model and input (channels, height, width, dtype):
# measured once, on the first forward that needs it.
_PER_IMAGE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, int]] = weakref.WeakKeyDictionary()

# An automatic chunk is tuned by timing: the activation rule's size first, then twice as
# many images per pass while that is faster per image by more than TUNE_MARGIN. The rule
# alone does not see a model whose largest outputs are few (resnet18 at 224x224, 3 MiB
# only at its stem, gained 1.1-1.4x from 2-8 images per pass) nor one just past the
# budget (resnet_pico at 224x224 ran 7% faster at 2 images than at 1 and 1.5x slower at
# 4). Every size is timed on its second and third passes, and the faster of the two
# counts: the first pass at a new batch size also sets up that size's kernels, and one
# timed pass could be slowed by something else (on an Intel Xeon a single timing once
# kept resnet18 at 1 image per pass, 25% slower per image than at 4). Passes are real
# work (their maps are kept), and the state is kept per model and input like the
# measurement, so a tuning that one call's images do not finish goes on in the next call.
TUNE_MARGIN = 0.05
TIMED_PASSES = 2
_clock = time.perf_counter


def _now(device: torch.device) -> float:
    """The clock once the device's queued work is done (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return _clock()


class _ChunkTuning:
    """Where the timing search for one model and input stands."""

    def __init__(self, start: int) -> None:
        self.best = start  # images per pass in use
        self.best_per_image = float("inf")
        self.trying = start  # the size being timed
        self.passes = 0  # passes at ``trying`` so far (the first one is not timed)
        self.trying_per_image = float("inf")  # its fastest timed pass, per image
        self.done = False

    def next_size(self, remaining: int) -> int:
        if self.done or self.trying > remaining:
            return min(self.best, remaining)
        return self.trying

    def record(self, n: int, seconds: float) -> None:
        if self.done or n != self.trying:
            return
        self.passes += 1
        if self.passes < 2:
            return
        per_image = self.trying_per_image = min(self.trying_per_image, seconds / n)
        if self.passes < 1 + TIMED_PASSES:
            return
        if per_image < self.best_per_image * (1 - TUNE_MARGIN):
            self.best, self.best_per_image = n, per_image
            self.trying, self.passes, self.trying_per_image = 2 * n, 0, float("inf")
        else:
            self.done = True


_TUNING: weakref.WeakKeyDictionary[nn.Module, dict[tuple, _ChunkTuning]] = (
    weakref.WeakKeyDictionary()
)


@contextmanager
def largest_output(model: nn.Module):
    """Yields a one-item list that holds, on exit, the bytes of the largest tensor any
    module of ``model`` returned inside the block (what the pass size is measured by)."""
    largest = [0]

    def hook(_m, _i, out):
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                largest[0] = max(largest[0], t.numel() * t.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        yield largest
    finally:
        for h in handles:
            h.remove()


class _PassSize:
    """Chunk and forward-batch sizes of one ``explain`` call.

    Given sizes are used as they are; a missing one comes from the model's largest module
    output per image for this input size, measured with forward hooks during the first
    forward (once per model and input size; later calls reuse it).
    """

    def __init__(
        self, model: nn.Module, images: torch.Tensor, chunk_size: int | None, batch_size: int | None
    ) -> None:
        self.chunk_size, self.batch_size = chunk_size, batch_size
        self.key = (*images.shape[1:], images.dtype)
        self.per_image = _PER_IMAGE.get(model, {}).get(self.key)

    @property
    def measured(self) -> bool:
        return self.per_image is not None or bool(self.chunk_size and self.batch_size)

    @contextmanager
    def watch(self, model: nn.Module, images: int):
        if self.measured:
            yield
            return
        with largest_output(model) as largest:
            yield
        self.per_image = max(1, largest[0] // images)
        _PER_IMAGE.setdefault(model, {})[self.key] = self.per_image

    def next_chunk(self, model: nn.Module, remaining: int) -> int:
        """Images in the next pass: the given ``chunk_size``; one image while the
        activation is not measured; else the tuning's size (see ``TUNE_MARGIN``)."""
        if self.chunk_size:
            return min(self.chunk_size, remaining)
        if self.per_image is None:
            return 1
        return self._tuning(model).next_size(remaining)

    def timed(self, model: nn.Module, n: int, seconds: float) -> None:
        """Report a pass of ``n`` images that took ``seconds`` (automatic chunks only; the
        caller leaves out the pass that measured the activation, whose hooks slow it)."""
        if not self.chunk_size:
            self._tuning(model).record(n, seconds)

    def _tuning(self, model: nn.Module) -> _ChunkTuning:
        states = _TUNING.setdefault(model, {})
        if self.key not in states:
            states[self.key] = _ChunkTuning(images_per_pass(self.per_image or 1))
        return states[self.key]

    @property
    def batch(self) -> int:
        return self.batch_size or images_per_pass(self.per_image or 1)


@contextmanager
def _eval_mode(model: nn.Module):
    """The model in eval mode, put back as it was; nothing is touched when it already is
    (switching modes walks every module, a noticeable cost per call on small inputs)."""
    if not any(m.training for m in model.modules()):
        yield
        return
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _logits(out: object) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


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
    model: nn.Module, layer: nn.Module, x: torch.Tensor, targets, method: str, size: _PassSize
) -> tuple[torch.Tensor, torch.Tensor]:
    fn = _GRAD_FNS[method]
    with _graph_from(layer) as store:
        with size.watch(model, len(x)):
            logits = _logits(model(x.detach()))
        t = _targets(logits, targets)
        if "out" not in store:
            raise ValueError("the explained layer was not called in the model's forward")
        act = store["out"]
        a = _to_map(model, act.detach()).float()
        maps = []
        for j in range(t.shape[1]):
            score = logits.gather(1, t[:, j : j + 1]).sum()
            (grad,) = torch.autograd.grad(score, act, retain_graph=j < t.shape[1] - 1)
            maps.append(fn(a, _to_map(model, grad).float()))
    return F.relu(torch.stack(maps, 1)), t


def _activation(
    model: nn.Module, layer: nn.Module, x: torch.Tensor, size: _PassSize
) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad(), _capture(layer) as store, size.watch(model, len(x)):
        logits = _logits(model(x))
    if "out" not in store:
        raise ValueError("the explained layer was not called in the model's forward")
    return logits, store["out"]


def _score_cam(model, layer, x, targets, size: _PassSize) -> tuple[torch.Tensor, torch.Tensor]:
    """Score-CAM of a chunk: every non-constant (image, channel) map of the chunk masks its
    image, and the masked inputs of all images go through the model ``size.batch`` at a
    time. A constant map normalises to a zero mask (its 0/0 read as 0): the masked input
    is then all zeros whatever the image, so one forward of a zero image serves them all."""
    logits, out = _activation(model, layer, x, size)
    t = _targets(logits, targets)
    a = _to_map(model, out).float()
    b, c = a.shape[:2]
    lo, hi = torch.aminmax(a.flatten(2), dim=-1)
    live = (hi > lo).flatten().nonzero().squeeze(1)  # image * c + channel
    scores = torch.empty(b, c, t.shape[1], device=x.device)
    with torch.no_grad():
        if len(live) < b * c:
            zero = _logits(model(torch.zeros_like(x[:1]))).float().softmax(-1)[0]
            scores[:] = zero[t].unsqueeze(1)  # overwritten below for the live maps
        for start in range(0, len(live), size.batch):
            idx = live[start : start + size.batch]
            img, ch = idx // c, idx % c
            up = F.interpolate(
                a[img, ch].unsqueeze(1), size=x.shape[-2:], mode="bilinear", align_corners=False
            )
            masked = x[img] * _normalize(up).to(x.dtype)
            probs = _logits(model(masked)).float().softmax(-1)
            scores[img, ch] = probs.gather(1, t[img])
    weights = scores.softmax(dim=1)  # softmax across channels, per target
    return F.relu(torch.einsum("bct,bchw->bthw", weights, a)), t


def _ablation_cam(model, layer, x, targets, size: _PassSize) -> tuple[torch.Tensor, torch.Tensor]:
    """Ablation-CAM of a chunk: the ablated copies of all images go through the model
    ``size.batch`` at a time. Zeroing a channel that is already zero everywhere changes
    nothing, so such channels get a drop of 0 without a forward."""
    logits, out = _activation(model, layer, x, size)
    t = _targets(logits, targets)
    a = _to_map(model, out).float()
    b, c = a.shape[:2]
    base = logits.float().gather(1, t)  # B x T
    prefix = getattr(model, "num_prefix_tokens", 0) if out.ndim == 3 else 0
    live = (a.flatten(2).abs().amax(-1) > 0).flatten().nonzero().squeeze(1)
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

    drops = torch.zeros(b, c, t.shape[1], device=x.device)
    handle = layer.register_forward_hook(ablate)
    try:
        with torch.no_grad():
            for start in range(0, len(live), size.batch):
                idx = live[start : start + size.batch]
                img, ch = idx // c, idx % c
                keep = torch.ones(len(idx), c, device=x.device)
                keep[torch.arange(len(idx), device=x.device), ch] = 0
                state["keep"] = keep
                score = _logits(model(x[img])).float().gather(1, t[img])
                drops[img, ch] = (base[img] - score) / (base[img].abs() + _EPS)
    finally:
        handle.remove()
    return F.relu(torch.einsum("bct,bchw->bthw", drops, a)), t


def _raw_maps(model, layer, x, targets, method, size: _PassSize) -> torch.Tensor:
    """(B, T, h, w) maps of one chunk at the layer's resolution, after ReLU."""
    if method in GRADIENT_METHODS:
        return _gradient_maps(model, layer, x, targets, method, size)[0]
    if method == "eigencam":
        logits, out = _activation(model, layer, x, size)
        t = _targets(logits, targets)
        maps = F.relu(eigen_projection(_to_map(model, out)))
        return maps.unsqueeze(1).expand(-1, t.shape[1], -1, -1)
    if method == "scorecam":
        return _score_cam(model, layer, x, targets, size)[0]
    return _ablation_cam(model, layer, x, targets, size)[0]


def explain(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | int | list | None = None,
    method: str = "gradcam",
    layer: str | nn.Module | None = None,
    upsample: bool = True,
    normalize: bool = True,
    batch_size: int | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """One saliency map per image and target.

    ``images``: (B, C, H, W), already normalised as the model expects. ``targets``: None
    (predicted class), an int, (B,) or (B, T) class indices. Returns (B, H, W) maps for
    None / int / (B,) targets and (B, T, H, W) for (B, T); each map in [0, 1] when
    ``normalize`` and at input resolution when ``upsample`` (bilinear); otherwise the raw
    map at the layer's resolution (after ReLU).

    The images are explained ``chunk_size`` at a time, one forward (and for gradient
    methods one backward per target) per chunk. ``batch_size`` is how many masked inputs
    (Score-CAM) or ablated copies (Ablation-CAM) go through the model in one forward;
    those of several images share a forward. Either left at None comes from the model:
    the call's first forward (one image, or the given ``chunk_size``) measures the
    largest module output per image and the size is ``images_per_pass`` of it, the most
    images whose largest activation fits ``ACTIVATION_BYTES`` (4 MiB, measured on a CPU:
    1 image per pass for resnet_pico or resnet18 at 224x224, 64 for resnet_pico at
    32x32); the measurement is kept per model and input size. An automatic chunk is
    then tuned by timing the passes themselves: twice as many images per pass while that
    is more than ``TUNE_MARGIN`` (5%) faster per image, each size timed on its second and
    third passes (the faster counts);
    the search and its result are kept per model and input size too (timings on a busy
    machine can settle it on a slower size, never on a wrong map: every size gives the
    same maps). Upsampling and normalisation run once over all maps.
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
            raise ValueError(f"{key} must be a positive integer or None (automatic), got {value!r}")
    b = images.shape[0]
    per_image_targets = None
    if isinstance(targets, (torch.Tensor, list)):
        t_all = torch.as_tensor(targets)
        if t_all.ndim >= 1:
            if t_all.shape[0] != b:
                raise ValueError(f"targets has {t_all.shape[0]} entries for a batch of {b} images")
            per_image_targets = t_all
    layer = resolve_layer(model, layer)
    size = _PassSize(model, images, chunk_size, batch_size)
    parts, start = [], 0
    with _eval_mode(model):
        while start < b:
            n = size.next_chunk(model, b - start)
            part_targets = targets
            if per_image_targets is not None:
                part_targets = per_image_targets[start : start + n]
            measuring = size.per_image is None
            t0 = _now(images.device)
            parts.append(
                _raw_maps(model, layer, images[start : start + n], part_targets, method, size)
            )
            if not measuring:
                size.timed(model, n, _now(images.device) - t0)
            start += n
    maps = parts[0] if len(parts) == 1 else torch.cat(parts)
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
    maps = maps.detach()
    squeeze = per_image_targets is None or per_image_targets.ndim < 2
    return maps[:, 0] if squeeze else maps
