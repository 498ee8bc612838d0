"""Context prediction: the 8 relative positions, patch geometry, colour dropping."""

from __future__ import annotations

import pytest
import torch

from archbench.data import load_dataset
from archbench.models import create_model
from archbench.ssl.context import NEIGHBOUR_OFFSETS, color_drop, sample_patch_pairs
from archbench.train import create_task, fit, load_recipe


def test_eight_positions_in_the_papers_order():
    # figure 2 of the paper: numbered row by row around the centre, centre excluded
    expected = [(r, c) for r in (-1, 0, 1) for c in (-1, 0, 1) if (r, c) != (0, 0)]
    assert list(NEIGHBOUR_OFFSETS) == expected
    assert len(set(NEIGHBOUR_OFFSETS)) == 8


def _coordinate_image(b: int, side: int) -> torch.Tensor:
    """Channel 0 holds the row, channel 1 the column of each pixel."""
    rows = torch.arange(side).view(side, 1).expand(side, side).float()
    cols = torch.arange(side).view(1, side).expand(side, side).float()
    return torch.stack([rows, cols, torch.zeros(side, side)]).expand(b, -1, -1, -1).clone()


@pytest.mark.parametrize("position", range(8))
def test_neighbour_patch_lies_at_its_offset(position):
    patch, gap = 5, 2
    images = _coordinate_image(3, 24)
    pos = torch.full((3,), position)
    centre, neighbour, got = sample_patch_pairs(images, patch, gap, 0, positions=pos)
    assert torch.equal(got, pos)
    assert centre.shape == neighbour.shape == (3, 3, patch, patch)
    dr, dc = NEIGHBOUR_OFFSETS[position]
    # without jitter the neighbour's top-left corner is the centre's plus one cell per step
    cell = patch + gap
    assert torch.equal(
        neighbour[:, 0, 0, 0] - centre[:, 0, 0, 0], torch.full((3,), float(dr * cell))
    )
    assert torch.equal(
        neighbour[:, 1, 0, 0] - centre[:, 1, 0, 0], torch.full((3,), float(dc * cell))
    )
    # patches are contiguous pixel blocks
    assert torch.equal(
        centre[:, 0, :, 0] - centre[:, 0, :1, 0], torch.arange(patch).float().expand(3, -1)
    )


def test_jitter_moves_patches_by_at_most_jitter():
    images = _coordinate_image(64, 32)
    pos = torch.full((64,), 4)  # right neighbour: same row of cells
    c, n, _ = sample_patch_pairs(images, 6, 2, 2, positions=pos)
    drow = n[:, 0, 0, 0] - c[:, 0, 0, 0]
    assert drow.abs().max() <= 4 and drow.abs().max() > 0
    dcol = n[:, 1, 0, 0] - c[:, 1, 0, 0]
    assert ((dcol - 8).abs() <= 4).all()


def test_grid_too_large_for_the_image_is_refused():
    with pytest.raises(ValueError, match="lower patch"):
        sample_patch_pairs(torch.zeros(1, 3, 16, 16), 8, 2, 1)
    with pytest.raises(ValueError, match="patch"):
        create_task("context_prediction", {"patch": 0})


def test_color_drop_keeps_one_channel_and_replaces_the_others_by_faint_noise():
    x = torch.rand(16, 3, 8, 8)
    out = color_drop(x)
    kept = [(out[i] == x[i]).all(dim=(1, 2)) for i in range(16)]
    for i, k in enumerate(kept):
        assert int(k.sum()) == 1
        keep = int(k.nonzero())
        std = float(x[i, keep].std())
        for c in range(3):
            if c != keep:
                # Gaussian noise with 1/100 of the kept channel's standard deviation
                assert float(out[i, c].std()) < std / 20
                assert float(out[i, c].mean()) == pytest.approx(
                    float(x[i, keep].mean()), abs=std / 10
                )


def test_fit_learns_relative_positions(tmp_path):
    data = load_dataset("shapes:n_train=32,n_val=16,n_test=16,img_size=16")
    model = create_model("resnet_pico", num_classes=data.num_classes, img_size=16)
    recipe = load_recipe("cpu-fast").replace(
        epochs=1,
        batch_size=16,
        warmup_epochs=0,
        task="context_prediction",
        task_args={"patch": 4, "gap": 1, "jitter": 1, "hidden": 32},
    )
    res = fit(model, data, recipe, tmp_path, progress=False)
    assert res.status == "completed"
    rec = res.history[-1]
    assert 0.0 <= rec["val_acc"] <= 1.0 and rec["val_loss"] > 0
