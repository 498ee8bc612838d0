import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from archbench.bench import (
    count_flops,
    count_params,
    environment,
    measure_latency,
    measure_peak_memory,
    measure_throughput,
)


class Tiny(nn.Module):
    in_chans = 3

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8, 10)
        self.frozen = nn.Parameter(torch.zeros(5), requires_grad=False)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def test_count_params_total_and_trainable():
    p = count_params(Tiny())
    assert p["total"] == 3 * 8 * 9 + 8 * 10 + 10 + 5
    assert p["trainable"] == p["total"] - 5


def test_flops_match_hand_count_on_meta_and_real():
    model = Tiny()
    conv_macs = 8 * 3 * 9 * 16 * 16
    fc_macs = 8 * 10
    for on_meta in (True, False):
        f = count_flops(model, 16, on_meta=on_meta)
        assert f["macs"] == conv_macs + fc_macs
        assert f["flops"] == 2 * f["macs"]
    assert count_flops(model, 16, batch=4)["macs"] == 4 * (conv_macs + fc_macs)


def test_latency_and_throughput_report_conditions():
    model = Tiny()
    lat = measure_latency(model, 16, warmup=1, repeats=3)
    assert lat.batch == 1 and lat.repeats == 3 and lat.min_ms <= lat.median_ms <= lat.p90_ms
    thr = measure_throughput(model, 16, batch=4, min_seconds=0.01, max_iterations=3)
    assert thr.images_per_s > 0 and thr.batch == 4 and thr.iterations >= 1


def test_peak_memory_grows_with_batch():
    model = Tiny()
    small = measure_peak_memory(model, 32, batch=2)["peak_bytes"]
    large = measure_peak_memory(model, 32, batch=16)["peak_bytes"]
    # the conv output alone is batch x 8 x 32 x 32 floats
    assert large >= 16 * 8 * 32 * 32 * 4
    assert large > small
    trained = measure_peak_memory(model, 32, batch=16, train=True)
    assert trained["peak_bytes"] >= large and all(p.grad is None for p in model.parameters())


def test_environment_fields():
    env = environment()
    for key in ("torch", "threads", "cpu", "device", "python"):
        assert env[key] not in (None, "")
    assert env["torch"] == torch.__version__


# ----- the stability rule, checked with a fake clock (no real timing) ------------------


class FakeClock:
    """A clock that only moves when the fake model runs: each forward pass takes the next
    programmed duration, in ticks of 1/1024 s so that every time and ratio is exact in
    binary floating point (10 ticks / 8 ticks is exactly 1.25)."""

    TICK = 1 / 1024

    def __init__(self, durations):
        self.ticks = 0
        self.durations = list(durations)
        self.calls = 0

    def __call__(self) -> float:
        return self.ticks * self.TICK

    def advance(self) -> None:
        self.ticks += self.durations[self.calls]
        self.calls += 1


def ms(ticks: float) -> float:
    return ticks * FakeClock.TICK * 1e3


class ClockedModel(nn.Module):
    in_chans = 3

    def __init__(self, clock: FakeClock):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.clock = clock

    def forward(self, x):
        self.clock.advance()
        return self.fc(x.mean((2, 3)))


def _latency(durations, **kw):
    clock = FakeClock(durations)
    kw = {"warmup": 0, "repeats": 5, "number": 1, "timer": clock, **kw}
    return measure_latency(ClockedModel(clock), 8, **kw), clock


def test_a_stable_first_block_is_accepted_with_its_spread():
    lat, clock = _latency([10, 12, 11, 10, 12])
    assert clock.calls == 5 and lat.blocks == 1 and not lat.unstable
    assert lat.median_ms == pytest.approx(ms(11))
    assert (lat.min_ms, lat.max_ms) == pytest.approx((ms(10), ms(12)))
    # quartiles of the five repeats, computed independently with numpy
    q1, q3 = np.percentile([ms(t) for t in (10, 12, 11, 10, 12)], [25, 75])
    assert (lat.q1_ms, lat.q3_ms) == pytest.approx((q1, q3))
    assert lat.ratio == pytest.approx(1.2)


def test_max_exactly_1_25_times_min_is_stable_and_just_above_is_not():
    edge = [800, 1000, 900, 900, 800]  # exactly 1.25: accepted
    lat, _ = _latency(edge)
    assert lat.blocks == 1 and not lat.unstable
    over = [800, 1001, 900, 900, 800]  # 1.25125: measured again; the second is stable
    second = [20, 21, 20, 22, 21]
    lat, clock = _latency(over + second)
    assert clock.calls == 10 and lat.blocks == 2 and not lat.unstable
    assert lat.median_ms == pytest.approx(ms(21))  # the figure comes from the accepted block
    assert lat.ratio == pytest.approx(22 / 20)


def test_a_never_stable_timing_is_flagged_and_reports_its_least_unstable_block():
    blocks = [[10, 30, 10, 10, 10], [10, 14, 10, 10, 10], [10, 20, 10, 10, 10]]
    lat, clock = _latency([t for b in blocks for t in b], max_blocks=3)
    assert clock.calls == 15 and lat.blocks == 3 and lat.unstable
    assert lat.ratio == pytest.approx(1.4) and lat.max_ms == pytest.approx(ms(14))
    record = lat.to_dict()
    assert record["unstable"] is True and record["blocks"] == 3


def test_a_stricter_ratio_rejects_what_the_default_accepts():
    lat, _ = _latency([10, 12, 11, 10, 12] * 2, max_blocks=2, max_ratio=1.1)
    assert lat.unstable and lat.blocks == 2


def test_throughput_blocks_follow_the_same_rule():
    clock = FakeClock([51, 40, 40, 41, 42, 40])  # 51/40 > 1.25: unstable; then stable
    thr = measure_throughput(
        ClockedModel(clock), 8, batch=4, warmup=0, repeats=3, number=1, timer=clock
    )
    assert thr.blocks == 2 and not thr.unstable
    assert thr.images_per_s == pytest.approx(4 / (41 * FakeClock.TICK))
    assert thr.min_images_per_s == pytest.approx(4 / (42 * FakeClock.TICK))
    assert thr.max_images_per_s == pytest.approx(4 / (40 * FakeClock.TICK))
    assert thr.iterations == 3 and thr.seconds == pytest.approx(123 * FakeClock.TICK)


def test_repeats_are_calibrated_to_last_long_enough():
    clock = FakeClock([2] * 40)  # 2 ticks (1.95 ms) a pass; a repeat of >= 5 ms needs 3
    lat = measure_latency(
        ClockedModel(clock), 8, warmup=0, repeats=4, min_repeat_seconds=0.005, timer=clock
    )
    assert lat.number == 3 and clock.calls == 1 + 4 * 3
    assert lat.median_ms == pytest.approx(ms(2))


def test_timings_carry_the_load_average(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (3.5, 2.0, 1.25))
    lat, _ = _latency([10] * 5)
    assert lat.to_dict()["load_avg"] == [3.5, 2.0, 1.25]
    clock = FakeClock([10] * 5)
    thr = measure_throughput(
        ClockedModel(clock), 8, batch=2, warmup=0, repeats=5, number=1, timer=clock
    )
    assert thr.to_dict()["load_avg"] == [3.5, 2.0, 1.25]


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"repeats": 1}, "repeats must be >= 2"),
        ({"max_ratio": 0.9}, "max_ratio must be >= 1"),
        ({"max_blocks": 0}, "max_blocks must be >= 1"),
    ],
)
def test_bad_timing_options_fail_early(kw, match):
    with pytest.raises(ValueError, match=match):
        _latency([10] * 20, **kw)
