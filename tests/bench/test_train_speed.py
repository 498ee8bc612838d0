"""Training speed: counted step FLOPs, the peak FLOP/s, timed steps and utilization."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn

from archbench.bench.train_speed import (
    count_train_flops,
    measure_peak_flops,
    measure_train_throughput,
    train_utilization,
)
from archbench.commands.bench import bench_models, print_bench_table


class TinyMLP(nn.Module):
    """3x2x2 input -> 12 features -> 8 -> 5, with a BatchNorm so train mode matters."""

    in_chans = 3

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 8)
        self.bn = nn.BatchNorm1d(8)
        self.fc2 = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(x.flatten(1)))))


def fake_clock(step: float = 0.01):
    ticks = itertools.count()
    return lambda: next(ticks) * step


def test_train_flops_counted_by_hand():
    flops = count_train_flops(TinyMLP(), (2, 2), batch=4)
    # forward: 2 FLOPs per multiply-add, 12*8 + 8*5 multiply-adds per image
    assert flops["forward_flops_per_image"] == 2 * (12 * 8 + 8 * 5)
    # backward: fc2 needs its weight gradient and its input gradient (8*5 each); fc1 only
    # its weight gradient (12*8): the image itself does not require a gradient
    assert flops["backward_flops_per_image"] == 2 * (8 * 5 + 8 * 5 + 12 * 8)
    assert flops["train_flops_per_image"] == 2 * (2 * 12 * 8 + 3 * 8 * 5)


def test_peak_flops_is_the_faster_of_matmul_and_1x1_convolution():
    # every timer reading is 10 ms after the last: calibration finds 10 calls per 0.1 s
    # repeat, so each call of either kernel is timed at 1 ms
    mm = 2 * 64**3 / 1e-3  # n x n by n x n: 2 n^3 FLOPs
    for channels, kernel in ((16, "conv1x1"), (4, "mm")):
        conv = 2 * (64 * 8 * 8) * channels * channels / 1e-3  # 4096 pixels, C -> C
        peak = measure_peak_flops("fp32", n=64, timer=fake_clock(0.01), conv_channels=channels)
        assert peak["kernels"]["mm"] == pytest.approx(mm)
        assert peak["kernels"]["conv1x1"] == pytest.approx(conv)
        assert peak["kernel"] == kernel
        assert peak["flops_per_s"] == pytest.approx(max(mm, conv))
    assert peak["n"] == 64 and peak["dtype"] == "fp32" and peak["conv_channels"] == 4
    with pytest.raises(ValueError, match="dtype must be one of"):
        measure_peak_flops("fp8")


def test_train_throughput_steps_a_copy_and_counts_images():
    torch.manual_seed(0)
    model = TinyMLP()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = measure_train_throughput(
        model, (2, 2), batch=6, repeats=3, min_seconds=0.3, timer=fake_clock(0.01)
    )
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN stats kept
    # calibration: one step "takes" 10 ms, a repeat should last 0.3 / 3 s -> 10 steps
    assert res.number == 10
    assert res.images_per_s == pytest.approx(6 / (0.01 / 10))
    assert not res.unstable


def test_train_throughput_really_trains(monkeypatch):
    calls = []
    real = torch.optim.SGD.step

    def spy(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    measure_train_throughput(
        TinyMLP(), (2, 2), batch=4, warmup=1, repeats=2, number=3, max_ratio=1e9
    )
    assert len(calls) == 1 + 2 * 3  # warm-up plus every timed step


def test_train_bad_input():
    with pytest.raises(ValueError, match="batch >= 2"):
        measure_train_throughput(TinyMLP(), (2, 2), batch=1)
    with pytest.raises(ValueError, match="peak FLOP/s must be positive"):
        train_utilization(10.0, 100.0, 0.0)

    class Features(nn.Module):
        in_chans = 3

        def forward(self, x):
            return x

    with pytest.raises(ValueError, match="classifier returning"):
        measure_train_throughput(Features(), (2, 2), batch=2)


def test_utilization_is_achieved_over_peak():
    util = train_utilization(images_per_s=50.0, train_flops_per_image=3e9, peak_flops_per_s=2e11)
    assert util["train_flops_per_s"] == 1.5e11
    assert util["utilization"] == pytest.approx(0.75)


def test_bench_train_reports_utilization(capsys):
    (rec,) = bench_models(["resnet_pico"], 32, 4, repeats=2, throughput_seconds=0.05, train=True)
    train = rec["train"]
    assert train["detail"]["batch"] == 4
    expected = train["images_per_s"] * train["train_flops_per_image"] / train["peak_flops_per_s"]
    assert train["utilization"] == pytest.approx(expected)
    # a training step costs more than the forward pass alone (2 FLOPs per MAC)
    assert train["train_flops_per_image"] > 2 * rec["macs"]
    assert train["forward_flops_per_image"] == pytest.approx(2 * rec["macs"], rel=1e-6)
    print_bench_table([rec], 4)
    out = capsys.readouterr().out
    assert "train img/s" in out.splitlines()[0] and "peak" in out and "1x1 convolution" in out


def test_bench_train_with_onednn_linears_counts_the_plain_model_flops(capsys):
    """--onednn-linear times the steps with mixer_pico's nn.Linear layers on oneDNN, and
    counts the FLOPs on the plain model (the counter does not know oneDNN's op), so the
    count is the plain step's."""
    from archbench.layers.packed_linear import onednn_linear_available
    from archbench.models import create_model

    if not onednn_linear_available()[0]:
        pytest.skip(onednn_linear_available()[1])
    (rec,) = bench_models(
        ["mixer_pico"], 32, 4, repeats=2, throughput_seconds=0.05, train=True, onednn_linear=True
    )
    train = rec["train"]
    model = create_model("mixer_pico", img_size=32)
    assert train["onednn_linears"] == sum(type(m) is nn.Linear for m in model.modules()) > 0
    torch.manual_seed(0)
    plain = count_train_flops(model, (32, 32))["train_flops_per_image"]
    assert train["train_flops_per_image"] == pytest.approx(plain)
    print_bench_table([rec], 4)
    assert "nn.Linear layers trained on oneDNN" in capsys.readouterr().out
