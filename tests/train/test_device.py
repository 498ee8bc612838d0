"""Devices and precision of ``fit``: the default CPU path, bf16 autocast, channels_last,
the gradient scaler's logic, compile, and the refusals (fp16 on CPU, a missing GPU, an
unknown precision or device). CUDA-only branches are run through their CPU equivalents."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from archbench.data import load_dataset
from archbench.data.loader import epoch_generator
from archbench.models import create_model
from archbench.train import Recipe, engine, fit
from archbench.train.engine import resolve_device, to_device

SPEC = "shapes:n_train=32,n_val=8,n_test=8,img_size=16,num_classes=4"
# no augmentation, no smoothing, constant lr, plain SGD: a loop a test can write out
PLAIN = Recipe(
    epochs=1,
    batch_size=8,
    optimizer="sgd",
    lr=0.05,
    momentum=0.9,
    nesterov=True,
    weight_decay=0.0,
    schedule="constant",
    warmup_epochs=0.0,
    label_smoothing=0.0,
    crop="none",
    hflip=0.0,
    adapt=False,
)


@pytest.fixture(scope="module")
def data():
    return load_dataset(SPEC, seed=0)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet_pico", num_classes=4, img_size=16)


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


def test_default_path_is_the_plain_loop(tmp_path, data):
    """fit with nothing asked for trains on the CPU exactly as a hand-written fp32 loop:
    the same shuffled batches, normalization, cross-entropy and SGD steps."""
    model = _model()
    ref = copy.deepcopy(model)
    res = fit(model, data, PLAIN, tmp_path, progress=False)
    assert res.runtime == {
        "device": "cpu",
        "precision": "fp32",
        "channels_last": False,
        "compile": False,
    }
    assert next(model.parameters()).is_contiguous()  # NCHW kept
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ref.train()
    n, b = len(data.train), PLAIN.batch_size
    order = torch.randperm(n, generator=epoch_generator(PLAIN.seed, 0, stream=1))
    for i in range(n // b):
        sel = order[i * b : (i + 1) * b]
        x = (data.train.images[sel].float() / 255.0 - mean) / std
        loss = F.cross_entropy(ref(x), data.train.labels[sel])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert res.steps == n // b
    assert _max_diff(model, ref) < 1e-5


def test_bf16_autocast_on_cpu_trains_close_to_fp32(tmp_path, data):
    """bf16 autocast runs on the CPU; its first-step loss is within 2e-2 (relative) of
    fp32's (bf16 keeps 8 bits of mantissa, ~4e-3 per rounding), and training stays finite."""
    r1 = PLAIN.replace(total_steps=1)
    f32 = fit(_model(), data, r1, tmp_path / "fp32", progress=False)
    b16 = fit(_model(), data, r1.replace(precision="bf16"), tmp_path / "bf16", progress=False)
    l32, l16 = f32.history[0]["train_loss"], b16.history[0]["train_loss"]
    assert b16.status == "completed" and b16.runtime["precision"] == "bf16"
    assert l16 != l32  # autocast was on: bf16 rounding changes the loss somewhat
    assert abs(l16 - l32) / l32 < 2e-2


def test_channels_last_gives_the_same_weights(tmp_path, data):
    """NHWC model and batches give the weights of NCHW after 4 steps, within 1e-4 (the
    convolutions sum in another order)."""
    a = _model()
    fit(a, data, PLAIN, tmp_path / "nchw", progress=False)
    b = _model()
    res = fit(b, data, PLAIN.replace(channels_last=True), tmp_path / "nhwc", progress=False)
    assert res.runtime["channels_last"] is True
    conv = next(m for m in b.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    assert _max_diff(a, b) < 1e-4


def test_batches_reach_the_model_in_channels_last(tmp_path, data):
    seen = []

    class Spy(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            if len(x) == 8:  # a batch (task.check probes the model with a smaller one)
                nhwc = x.is_contiguous(memory_format=torch.channels_last) and x.stride(1) == 1
                seen.append((self.training, nhwc))
            return self.inner(x)

    fit(Spy(_model()), data, PLAIN.replace(channels_last=True), tmp_path, progress=False)
    assert [t for t, _ in seen] == [True] * 4 + [False]  # 4 training batches, 1 validation
    assert all(nhwc for _, nhwc in seen)


def test_gradient_scaler_logic_on_cpu(tmp_path, data, monkeypatch):
    """The fp16 loop with an active scaler (the CPU one, in fp32): scaling by 2**10 and
    unscaling before clipping leaves the weights those of the unscaled run; a step whose
    gradients overflow is skipped (weights kept, scale halved), not counted as a failure."""
    recipe = PLAIN.replace(grad_clip=1.0)
    a = _model()
    fit(a, data, recipe, tmp_path / "plain", progress=False)
    scalers = []

    def scaler(precision, dev):
        s = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1000)
        scalers.append(s)
        return s

    monkeypatch.setattr(engine, "_make_scaler", scaler)
    b = _model()
    res = fit(b, data, recipe, tmp_path / "scaled", progress=False)
    assert res.status == "completed" and scalers[0].get_scale() == 2.0**10
    assert _max_diff(a, b) < 1e-5

    class Overflow:  # the first step's gradients overflow during backward
        def on_before_backward(self, state, loss):
            p = next(state.model.parameters())
            self.hook = p.register_hook(lambda g: torch.full_like(g, float("inf")))

        def on_after_backward(self, state):
            self.hook.remove()

    c = _model()
    start = copy.deepcopy(c)
    res = fit(c, data, recipe.replace(total_steps=1), tmp_path / "inf", callbacks=[Overflow()])
    assert res.status == "completed" and res.error is None
    assert scalers[-1].get_scale() == 2.0**9  # backoff 0.5 after the skipped step
    # the step was skipped: parameters untouched (the forward still moved BN statistics)
    assert all(torch.equal(p, q) for p, q in zip(c.parameters(), start.parameters()))
    meta = engine.read_checkpoint_meta(tmp_path / "inf" / "checkpoints" / "last.safetensors")
    assert meta["state"]["scaler"]["scale"] == 2.0**9  # a resumed run keeps its scale


def test_compile_compiles_the_model_in_place(tmp_path, data, monkeypatch):
    calls = []
    original = nn.Module.compile

    def eager_compile(self, *args, **kwargs):  # dynamo without a C++ toolchain
        calls.append(self)
        return original(self, backend="eager")

    monkeypatch.setattr(nn.Module, "compile", eager_compile)
    plain = _model()
    fit(plain, data, PLAIN.replace(total_steps=2), tmp_path / "plain", progress=False)
    model = _model()
    res = fit(
        model, data, PLAIN.replace(total_steps=2, compile=True), tmp_path / "c", progress=False
    )
    assert calls == [model] and res.runtime["compile"] is True
    assert _max_diff(plain, model) < 1e-5
    assert "compile" not in PLAIN.to_dict()  # off: recipes read as before
    torch._dynamo.reset()


def test_fp16_refused_on_cpu(tmp_path, data):
    with pytest.raises(ValueError, match=r"fp16 needs a CUDA device.*bf16 or fp32"):
        fit(_model(), data, PLAIN.replace(precision="fp16"), tmp_path, progress=False)
    assert not (tmp_path / "checkpoints").exists()


def test_unknown_precision_refused():
    with pytest.raises(ValueError, match=r"precision='fp8' is not one of fp32, bf16, fp16"):
        PLAIN.replace(precision="fp8")
    with pytest.raises(TypeError, match=r"channels_last must be true or false"):
        PLAIN.replace(channels_last="yes")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_refused(tmp_path, data):
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match=rf"device {name} was asked for.*use --device cpu"):
            fit(_model(), data, PLAIN, tmp_path, device=name)
    assert not (tmp_path / "checkpoints").exists()


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"unknown device 'tpu'.*cpu, cuda, cuda:N, mps, auto"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")  # mps before cpu
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")  # cuda first
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"has 2 CUDA device\(s\)"):
        resolve_device("cuda:2")


def test_copies_to_the_cpu_pin_nothing():
    x = torch.arange(6.0)
    y = to_device(x, torch.device("cpu"))
    assert y is x and not y.is_pinned()
