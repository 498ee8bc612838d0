"""PlainMamba: zig-zag paths, both scan forms, and the parameter counts."""

from __future__ import annotations

import pytest
import torch

from archbench.models import create_model
from archbench.models.plainmamba import PlainMamba2D, zigzag_paths


@pytest.mark.parametrize("h, w", [(3, 4), (4, 3), (5, 5)])
def test_zigzag_paths_are_continuous_permutations(h, w):
    paths, dirs = zigzag_paths(h, w)
    assert len(paths) == 4
    for path, d in zip(paths, dirs):
        assert sorted(path) == list(range(h * w))
        assert d[0] == 0 and all(1 <= x <= 4 for x in d[1:])
        for a, b in zip(path[:-1], path[1:]):
            assert abs(a // w - b // w) + abs(a % w - b % w) == 1
    assert paths[1] == paths[0][::-1]
    assert paths[0][: w + 1] == list(range(w)) + [2 * w - 1]


def test_mixer_chunked_and_sequential_scans_agree():
    mixer = PlainMamba2D(16, (3, 5), d_state=4).double()
    x = torch.randn(2, 15, 16, dtype=torch.float64)
    y = mixer(x)
    mixer.ssm.use_ref = True
    torch.testing.assert_close(mixer(x), y, rtol=1e-5, atol=1e-5)


def test_counts_without_head_match_paper():
    for name, paper in (("plainmamba_l2", 25.7), ("plainmamba_l3", 50.5)):
        with torch.device("meta"):
            model = create_model(name, num_classes=0)
        assert abs(sum(p.numel() for p in model.parameters()) / 1e6 / paper - 1) < 0.005
