"""TransHP: prompts injected at the right block, coarse logits and the hierarchy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archbench.models import create_model
from archbench.models.transhp import hierarchy_from_parents

HIER = ((0, 0, 1, 1, -1, 1), (0, 1, 2, 2, 3, 3))  # two levels for 6 fine classes


def test_release_levels_blocks_and_weights():
    with torch.device("meta"):
        model = create_model("transhp_small")
    # models.py: prototype_0..10 with 2, 2, 2, 4, 9, 16, 25, 49, 90, 170, 406 (+1) rows
    assert model.num_coarse == (2, 2, 2, 4, 9, 16, 25, 49, 90, 170, 406)
    assert [p.shape[0] for p in model.prompts] == [m + 1 for m in model.num_coarse]
    assert model.prompt_blocks == tuple(range(11))  # every block but the last
    # losses.py: weights of levels 0-10 (the fine-class loss has weight 1)
    assert model.prompt_loss_weights == (0.1,) * 5 + (0.15,) * 4 + (1.0, 1.0)
    assert not model.has_hierarchy


def test_hierarchy_from_parents_builds_levels_coarsest_first():
    # root 100 -> {10, 11}; 10 -> {20, 21}; 11 -> fine 5 directly; 20 -> {0, 1}; 21 -> {2, 3}
    # 11 -> 22 -> 4
    parents = {0: 20, 1: 20, 2: 21, 3: 21, 4: 22, 5: 11, 20: 10, 21: 10, 22: 11, 10: 100,
               11: 100, 100: None}  # fmt: skip
    levels = hierarchy_from_parents(parents, 6)
    assert levels == ((0, 0, 0, 0, 1, 1), (0, 0, 1, 1, 2, -1))
    with pytest.raises(ValueError, match="fine class 3"):
        hierarchy_from_parents({0: 10, 1: 10, 2: 10}, 4)
    with pytest.raises(ValueError, match="cycle"):
        hierarchy_from_parents({0: 10, 10: 11, 11: 10}, 1)


def test_prompts_enter_only_the_prompting_blocks():
    model = create_model("transhp_pico", num_classes=6, hierarchy=HIER).eval()
    assert model.num_coarse == (2, 4) and model.prompt_blocks == (3, 4)
    lengths = []
    for blk in model.blocks:
        blk.register_forward_hook(lambda m, i, o: lengths.append(i[0].shape[1]))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    n = 1 + 8 * 8
    assert lengths == [n, n, n, n + 3, n + 5, n]  # each level's coarse prompts + 1 extra
    assert [c.shape for c in model.coarse_logits] == [(2, 3), (2, 5)]


def test_prompts_condition_the_features():
    torch.manual_seed(0)
    model = create_model("transhp_pico", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        model.prompts[0].add_(torch.randn_like(model.prompts[0]))
        after = model(x)
    assert not torch.allclose(before, after)


def test_losses_are_the_weighted_coarse_cross_entropies():
    torch.manual_seed(0)
    model = create_model(
        "transhp_pico", num_classes=6, hierarchy=HIER, prompt_loss_weights=(0.15, 1.0)
    ).train()
    labels = torch.tensor([0, 3, 4])
    model(torch.randn(3, 3, 32, 32))
    # fine class 4 has no ancestor at level 0: it targets that level's extra prompt (2)
    coarse0, coarse1 = torch.tensor([0, 1, 2]), torch.tensor([0, 2, 3])
    l0 = F.cross_entropy(model.coarse_logits[0], coarse0)
    l1 = F.cross_entropy(model.coarse_logits[1], coarse1)
    torch.testing.assert_close(model.prompt_loss(labels), 0.15 * l0 + 1.0 * l1)
    # soft targets: a coarse class's target is the sum of its fine classes' targets
    soft = torch.full((3, 6), 0.02)
    soft[torch.arange(3), labels] = 0.9
    t0 = torch.stack([soft[:, [0, 1]].sum(1), soft[:, [2, 3, 5]].sum(1), soft[:, 4]], 1)
    t1 = torch.stack(
        [soft[:, 0], soft[:, 1], soft[:, [2, 3]].sum(1), soft[:, [4, 5]].sum(1), 0 * soft[:, 0]], 1
    )  # every fine class has a level-1 ancestor: the extra prompt's target is 0
    ce = [
        -(t * F.log_softmax(lg, -1)).sum(-1).mean() for t, lg in zip((t0, t1), model.coarse_logits)
    ]
    aux = model.aux_loss(soft)
    torch.testing.assert_close(aux, 0.15 * ce[0] + ce[1])
    aux.backward()
    assert model.prompt_classifiers[0].grad.abs().sum() > 0
    assert model.prompts[1].grad.abs().sum() > 0


def test_refuses_to_train_without_a_hierarchy(tmp_path):
    from archbench.data import load_dataset
    from archbench.train import Recipe, fit

    model = create_model("transhp_pico", num_classes=4).train()
    model(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="hierarchy"):
        model.aux_loss(torch.full((2, 4), 0.25))
    data = load_dataset("shapes:n_train=4,n_val=4,n_test=4,img_size=32,num_classes=4", seed=0)
    with pytest.raises(ValueError, match="class hierarchy"):
        fit(model, data, Recipe(epochs=1, batch_size=4), tmp_path, progress=False)
    # given one, it trains
    model.set_hierarchy(((0, 0, 1, 1), (0, 1, 2, -1)))
    model(torch.randn(2, 3, 32, 32))
    assert model.aux_loss(torch.full((2, 4), 0.25)) > 0


def test_bad_hierarchy_is_rejected():
    with pytest.raises(ValueError, match="fine classes"):
        create_model("transhp_pico", num_classes=6, hierarchy=((0, 1),))
    with pytest.raises(ValueError, match="prompt_blocks"):
        create_model("transhp_pico", num_classes=6, hierarchy=HIER, prompt_blocks=(9, 2))
    with pytest.raises(ValueError, match="prompt_loss_weights"):
        create_model("transhp_pico", prompt_loss_weights=(1.0,))
    model = create_model("transhp_pico", num_classes=6)
    with pytest.raises(ValueError, match="coarse class in"):
        model.set_hierarchy(((0, 0, 1, 1, 2, 7), (0, 1, 2, 2, 3, 3)))


def test_pos_embed_resized_when_img_size_changes():
    small = create_model("transhp_pico")
    big = create_model("transhp_pico", img_size=64)
    big.load_pos_embed_from(small.pos_embed, (8, 8))
    torch.testing.assert_close(big.pos_embed[:, 0], small.pos_embed[:, 0])
    assert big.pos_embed.shape == (1, 1 + 16 * 16, 96)
    with torch.no_grad():
        assert big.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
