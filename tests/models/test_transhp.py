"""TransHP: prompts injected at the right block, coarse logits and the hierarchy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archbench.models import create_model
from archbench.models.transhp import default_hierarchy


def test_default_hierarchy_groups_contiguous_fine_classes():
    assert default_hierarchy(10, 5) == (0, 0, 1, 1, 2, 2, 3, 3, 4, 4)
    model = create_model("transhp_pico", num_classes=10)
    torch.testing.assert_close(
        model.coarse_targets(torch.tensor([0, 3, 9]))[0], torch.tensor([0, 1, 4])
    )


def test_prompts_enter_only_the_prompting_block():
    model = create_model("transhp_pico", num_classes=10).eval()
    lengths = []
    for blk in model.blocks:
        blk.register_forward_hook(lambda m, i, o: lengths.append(i[0].shape[1]))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    n = 1 + 8 * 8
    assert lengths == [n, n, n, n + 6, n, n]  # 5 coarse prompts + 1 extra at block 3
    assert model.coarse_logits[0].shape == (2, 6)


def test_prompts_condition_the_features():
    torch.manual_seed(0)
    model = create_model("transhp_pico", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        model.prompts[0].add_(torch.randn_like(model.prompts[0]))
        after = model(x)
    assert not torch.allclose(before, after)


def test_prompt_loss_uses_custom_hierarchy_and_trains_prompt_classifiers():
    hierarchy = ((0, 1, 0, 1, 2, 2),)
    model = create_model(
        "transhp_pico", num_classes=6, hierarchy=hierarchy, prompt_blocks=(2,)
    ).train()
    assert model.num_coarse == (3,)
    targets = torch.tensor([0, 1, 4])
    model(torch.randn(3, 3, 32, 32))
    loss = model.prompt_loss(targets)
    expect = F.cross_entropy(model.coarse_logits[0], torch.tensor([0, 1, 2]))
    torch.testing.assert_close(loss, expect)
    loss.backward()
    assert model.prompt_classifiers[0].grad.abs().sum() > 0
    assert model.prompts[0].grad.abs().sum() > 0


def test_bad_hierarchy_is_rejected():
    with pytest.raises(ValueError, match="fine classes"):
        create_model("transhp_pico", num_classes=6, hierarchy=((0, 1),), prompt_blocks=(2,))
    with pytest.raises(ValueError, match="prompt_blocks"):
        create_model("transhp_pico", prompt_blocks=(9,))


def test_pos_embed_resized_when_img_size_changes():
    small = create_model("transhp_pico")
    big = create_model("transhp_pico", img_size=64)
    big.load_pos_embed_from(small.pos_embed, (8, 8))
    torch.testing.assert_close(big.pos_embed[:, 0], small.pos_embed[:, 0])
    assert big.pos_embed.shape == (1, 1 + 16 * 16, 96)
    with torch.no_grad():
        assert big.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
