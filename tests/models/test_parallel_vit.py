"""Parallel ViT blocks: the residual formula, parameter parity with the sequential ViT."""

from __future__ import annotations

import torch

from archbench.layers import TransformerBlock
from archbench.models import create_model
from archbench.models.parallel_vit import ParallelBlock


def _copy_branch(par: ParallelBlock, i: int, seq: TransformerBlock) -> None:
    seq.norm1.load_state_dict(par.attn_norms[i].state_dict())
    seq.attn.load_state_dict(par.attns[i].state_dict())
    seq.ls1.load_state_dict(par.attn_scales[i].state_dict())
    seq.norm2.load_state_dict(par.mlp_norms[i].state_dict())
    seq.mlp.load_state_dict(par.mlps[i].state_dict())
    seq.ls2.load_state_dict(par.mlp_scales[i].state_dict())


def _pair():
    torch.manual_seed(0)
    par = ParallelBlock(32, 4, num_parallel=2, init_values=0.5).eval()
    seqs = [TransformerBlock(32, 4, init_values=0.5).eval() for _ in range(2)]
    for i, s in enumerate(seqs):
        _copy_branch(par, i, s)
    return par, seqs


def test_parallel_block_sums_branches_on_the_same_input():
    par, (s0, s1) = _pair()
    x = torch.randn(2, 5, 32)
    y = x + s0.ls1(s0.attn(s0.norm1(x))) + s1.ls1(s1.attn(s1.norm1(x)))
    y = y + s0.ls2(s0.mlp(s0.norm2(y))) + s1.ls2(s1.mlp(s1.norm2(y)))
    torch.testing.assert_close(par(x), y, atol=1e-5, rtol=1e-5)


def test_parallel_differs_from_sequential_only_in_residual_order():
    par, (s0, s1) = _pair()
    x = torch.randn(2, 5, 32)
    assert not torch.allclose(par(x), s1(s0(x)), atol=1e-4)
    # with the second branch switched off, the parallel block is one sequential block
    with torch.no_grad():
        par.attn_scales[1].gamma.zero_()
        par.mlp_scales[1].gamma.zero_()
    torch.testing.assert_close(par(x), s0(x), atol=1e-5, rtol=1e-5)


def test_same_parameter_count_as_sequential_vit_of_double_depth():
    with torch.device("meta"):
        par = create_model("parallel_vit_small_12x2")
        seq = [TransformerBlock(384, 6, init_values=1e-4) for _ in range(24)]
    n_par = sum(p.numel() for p in par.blocks.parameters())
    n_seq = sum(p.numel() for b in seq for p in b.parameters())
    assert n_par == n_seq


def test_pos_embed_resized_when_img_size_changes():
    small = create_model("parallel_vit_pico")
    big = create_model("parallel_vit_pico", img_size=64)
    assert big.pos_embed.shape[1] == 16 * 16 and small.pos_embed.shape[1] == 8 * 8
    big.load_pos_embed_from(small.pos_embed, (8, 8))
    grid = big.pos_embed.reshape(16, 16, -1)
    # the resampled corners sit next to the originals' corners
    src = small.pos_embed.reshape(8, 8, -1)
    assert torch.corrcoef(torch.stack([grid[0, 0], src[0, 0]]))[0, 1] > 0.9
    with torch.no_grad():
        assert big.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_class_token_gets_no_position_embedding_as_in_the_release():
    # DeiT-III's vit_models: pos_embed is (1, num_patches, dim), added before the class
    # token is prepended, so the class token enters the first block unchanged
    model = create_model("parallel_vit_pico").eval()
    n = model.patch_embed.num_patches
    assert model.pos_embed.shape == (1, n, model.num_features)
    seen = []
    hook = model.blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.forward_features(x)
    hook.remove()
    tokens = seen[0]
    torch.testing.assert_close(tokens[:, 0], model.cls_token[:, 0].expand(2, -1))
    expected = model.patch_embed(x) + model.pos_embed
    torch.testing.assert_close(tokens[:, 1:], expected)
