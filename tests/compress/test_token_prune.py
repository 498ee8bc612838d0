"""EViT token reorganization and SiT token slimming inside plain ViT blocks."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from _prune_helpers import tiny_context, tiny_data

from archbench import create_model
from archbench.compress import create_compressor
from archbench.compress.token_prune import (
    SiTDistillation,
    TokenSlimmingModule,
    apply_evit,
    apply_sit,
    block_token_counts,
    check_plain_vit,
    evit_reorganize,
)

PLAIN = ["vit_pico", "deit_pico_distilled", "t2t_vit_pico"]


def _model(name: str, **kw):
    torch.manual_seed(0)
    return create_model(name, num_classes=4, img_size=16, **kw).eval()


@pytest.mark.parametrize("name", PLAIN)
@pytest.mark.parametrize("method", [apply_evit, apply_sit])
def test_keep_rate_one_is_the_original_model(name, method):
    model = _model(name)
    x = torch.randn(2, 3, 16, 16)
    ref = model(x)
    pruned = method(copy.deepcopy(model), 1.0)
    assert torch.equal(pruned(x), ref)
    # and a real keep rate changes the token counts of the same model
    counts = block_token_counts(method(copy.deepcopy(model), 0.5), x)
    assert min(counts) < counts[0] or counts[0] < 16 + model.num_prefix_tokens


def test_evit_halves_tokens_inside_block_four_of_twelve():
    model = _model("vit_pico", depth=12)  # 16 patch tokens + class token
    counts = block_token_counts(apply_evit(model, 0.5), torch.randn(1, 3, 16, 16))
    # the official drop_loc (3, 6, 9): the 4th block outputs cls + 8 kept + 1 fused token
    assert counts[:3] == [17, 17, 17]
    assert counts[3] == 1 + 8 + 1
    assert counts[6] == 1 + math.ceil(0.5 * 9) + 1
    assert counts[9] == 1 + math.ceil(0.5 * 6) + 1


def test_sit_halves_tokens_at_stage_ends():
    model = _model("vit_pico", depth=16)
    counts = block_token_counts(apply_sit(model, 0.5, [9, 3, 2, 2]), torch.randn(1, 3, 16, 16))
    # SiT-S stages [9, 3, 2, 2]: 16 -> 8 after block 9, -> 4 after 12, -> 2 after 14
    assert counts == [17] * 8 + [9] * 3 + [5] * 2 + [3] * 3
    # default for 12 blocks: SiT-S boundaries 9/16, 12/16, 14/16 of the depth -> 7, 9, 10
    counts12 = block_token_counts(
        apply_sit(_model("vit_pico", depth=12), 0.5), torch.randn(1, 3, 16, 16)
    )
    assert counts12 == [17] * 6 + [9] * 2 + [5] + [3] * 3


def test_evit_reorganize_by_hand():
    # a class token and 4 image tokens of 2 channels
    x = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [4.0, -1.0]]])
    attn = torch.tensor([[0.1, 0.5, 0.15, 0.25]])
    out = evit_reorganize(x, attn, keep=2, num_prefix=1)
    # kept: token 2 (0.5) then token 4 (0.25); fused: 0.1*[1,0] + 0.15*[2,2]
    expected = torch.tensor([[[9.0, 9.0], [0.0, 1.0], [4.0, -1.0], [0.1 + 0.3, 0.3]]])
    assert torch.allclose(out, expected)
    assert torch.equal(evit_reorganize(x, attn, 2, 1, fuse=False), expected[:, :3])


def test_evit_block_matches_the_paper_written_out():
    model = _model("vit_pico", depth=4)
    blk = copy.deepcopy(model.blocks[1])
    apply_evit(model, 0.5, [1])
    x = torch.randn(2, 17, blk.norm1.normalized_shape[0])
    got = model.blocks[1](x)
    # reference: the unmodified block's attention branch, the class attention written out
    h = blk.norm1(x)
    a = blk.attn
    qkv = a.qkv(h).view(2, 17, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
    probs = torch.softmax(qkv[0] @ qkv[1].transpose(-1, -2) / math.sqrt(a.head_dim), -1)
    cls_attn = probs[:, :, 0, 1:].mean(1)
    y = x + blk.attn(h)
    order = cls_attn.argsort(dim=1, descending=True)
    keep, rest = order[:, :8], order[:, 8:]
    rows = []
    for b in range(2):
        fused = (y[b, 1:][rest[b]] * cls_attn[b, rest[b]].unsqueeze(-1)).sum(0, keepdim=True)
        rows.append(torch.cat([y[b, :1], y[b, 1:][keep[b]], fused]))
    z = torch.stack(rows)
    z = z + blk.mlp(blk.norm2(z))
    assert got.shape == (2, 10, x.shape[-1])
    assert torch.allclose(got, z, atol=1e-5)


def test_token_slimming_module_is_the_formula():
    torch.manual_seed(1)
    tsm = TokenSlimmingModule(8, 3)
    with torch.no_grad():
        tsm.scale.fill_(2.0)
    x = torch.randn(2, 6, 8)
    w = tsm.weight[3](
        F.gelu(tsm.weight[1](F.layer_norm(x, (8,), tsm.weight[0].weight, tsm.weight[0].bias)))
    )
    a = torch.softmax(2.0 * w, dim=1)  # over the 6 input tokens
    expected = torch.einsum("bnk,bnc->bkc", a, x)
    assert torch.allclose(tsm(x), expected, atol=1e-6)
    # convex combinations: identical tokens stay that token
    same = torch.randn(1, 1, 8).expand(1, 6, 8)
    assert torch.allclose(tsm(same), same[:, :3], atol=1e-6)


@pytest.mark.parametrize("name", ["transhp_pico", "resnet_pico", "mixer_pico"])
def test_non_plain_models_are_refused(name):
    with pytest.raises(ValueError, match="plain ViT"):
        check_plain_vit(create_model(name, num_classes=4))


@pytest.mark.parametrize("rate", [0.0, 1.5, float("nan")])
def test_bad_keep_rate(rate):
    with pytest.raises(ValueError, match="keep_rate"):
        apply_evit(_model("vit_pico"), rate)
    with pytest.raises(ValueError, match="keep_rate"):
        apply_sit(_model("vit_pico"), rate)


def test_sit_frd_loss_terms_vanish_for_an_identical_student():
    data = tiny_data()
    model = _model("vit_pico")
    task = SiTDistillation(lambda_token=2.0, lambda_logits=2.0)
    task.teacher_model = copy.deepcopy(model)
    task.setup(model, data, None)
    task.to(torch.device("cpu"))

    class _B:
        images = torch.randn(4, 3, 16, 16)
        labels = torch.tensor([0, 1, 2, 3])
        targets = F.one_hot(labels, 4).float()

    class _S:
        pass

    s = _S()
    s.model = model
    out = task.step(_B, s)
    assert float(out["token"]) == 0.0 and abs(float(out["kd"])) < 1e-6
    ce = F.cross_entropy(model(_B.images), _B.labels)
    assert torch.allclose(out["loss"], ce, atol=1e-5)


@pytest.mark.parametrize("method", ["evit", "sit"])
def test_compressors_end_to_end(method, tmp_path):
    data = tiny_data()
    model = _model("vit_pico")
    comp = create_compressor(method, {"keep_rate": 0.5, "finetune_epochs": 1})
    res = comp(model, tiny_context(data, tmp_path))
    assert res.info["token_counts"][-1] < 17
    logits = res.model.eval()(torch.randn(3, 3, 16, 16))
    assert logits.shape == (3, 4) and torch.isfinite(logits).all()


@pytest.mark.parametrize(
    "method,args",
    [
        ("evit", {"keep_rate": 0.0}),
        ("evit", {"locations": "3,x"}),
        ("sit", {"keep_rate": 2.0}),
        ("sit", {"finetune_epochs": -1}),
    ],
)
def test_compressor_refuses_bad_arguments_before_work(method, args):
    with pytest.raises(ValueError):
        create_compressor(method, args)
