import os

import pytest
import torch

# Keep each test worker to one thread: CI runs two workers on two cores (a comparison
# reads OMP_NUM_THREADS for its jobs and measurements; spawned workers inherit it).
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("ARCHBENCH_TEST", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
