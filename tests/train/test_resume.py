"""A training process killed with SIGKILL mid-run resumes to bit-identical weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from archbench.train import read_checkpoint_meta

TIMINGS = ("epoch_time_s", "step_time_s", "data_time_s", "images_per_s")

sys.path.insert(0, str(Path(__file__).parent))
import _resume_worker as worker  # noqa: E402


def test_sigkill_then_resume_gives_identical_weights(tmp_path):
    ref_model, ref = worker.run(str(tmp_path / "ref"))
    assert ref.status == "completed" and ref.epochs_completed == 2
    total_steps = ref.steps

    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(Path(worker.__file__)), str(out), "0.15"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    last = out / "checkpoints" / "last.safetensors"
    deadline = time.time() + 60
    killed_at = None
    try:
        while time.time() < deadline and proc.poll() is None:
            if last.is_file():
                try:
                    step = read_checkpoint_meta(last)["state"]["step"]
                except (ValueError, KeyError):
                    step = 0
                # Past the first epoch boundary (6 steps/epoch), mid-way through epoch 2.
                if step >= 8:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(10)
                    killed_at = read_checkpoint_meta(last)["state"]["step"]
                    break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert killed_at is not None and 0 < killed_at < total_steps

    model, res = worker.run(str(out))  # resume in a fresh model
    assert res.status == "completed" and res.steps == total_steps
    ref_sd, sd = ref_model.state_dict(), model.state_dict()
    assert ref_sd.keys() == sd.keys()
    for k in ref_sd:
        assert torch.equal(ref_sd[k], sd[k]), k
    # The metrics log holds each epoch once, identical to the uninterrupted run.
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    assert [h["val_top1"] for h in res.history] == [h["val_top1"] for h in ref.history]
    assert res.history[-1]["val_ema_top1"] == ref.history[-1]["val_ema_top1"]
    assert res.history == [
        {**h, **{k: res.history[i][k] for k in TIMINGS}} for i, h in enumerate(ref.history)
    ]
    # Every tensor of the final checkpoints: weights, optimizer, EMA, task state, RNG.
    ref_ck = load_file(tmp_path / "ref" / "checkpoints" / "last.safetensors")
    ck = load_file(out / "checkpoints" / "last.safetensors")
    assert ref_ck.keys() == ck.keys()
    for prefix in ("model/", "optim/", "extra/cb/ema/", "extra/task/trainable.aux_head"):
        assert any(k.startswith(prefix) for k in ck), prefix
    assert "extra/task/bank" in ck and int(ck["extra/task/steps"]) == total_steps
    assert ck["extra/task/bank"].abs().sum() > 0
    different = [k for k in ref_ck if not torch.equal(ref_ck[k], ck[k])]
    assert not different, different[:10]
