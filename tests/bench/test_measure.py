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
