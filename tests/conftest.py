import os

import pytest
import torch

# Keep each test worker to one thread: CI runs two workers on two cores.
torch.set_num_threads(1)
os.environ.setdefault("ARCHBENCH_TEST", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
