"""Residual blocks make a projected shortcut after their main branch (as timm does).

Made first, the projected shortcut stays allocated through the branch's convolutions;
in res2net50_26w_4s at 224x224 that changed which freed blocks reached glibc's heap top
and cost page faults at inference (docs/performance.md). The outputs are the same either
way, so only the call order can tell.
"""

import pytest
import torch

from archbench import create_model

# (model, the branch's layers that must have run before the shortcut's projection)
CASES = [
    ("resnet_pico", ("conv1", "conv2")),
    ("resnet50", ("conv1", "conv2", "conv3")),
    ("res2net_pico", ("conv1", "convs", "conv3")),
    ("resnest_pico", ("conv1", "conv2", "conv3")),
    ("resnet_rs_pico", ("conv1", "conv2", "conv3")),
]


@pytest.mark.parametrize("name,branch", CASES, ids=[c[0] for c in CASES])
def test_projected_shortcut_runs_after_the_branch(name, branch):
    model = create_model(name, num_classes=10).eval()
    blocks = [
        m
        for m in model.modules()
        if getattr(m, "downsample", None) is not None and all(hasattr(m, b) for b in branch)
    ]
    assert blocks, f"{name}: no block with a projected shortcut"
    order: list[str] = []
    handles = [
        child.register_forward_hook(lambda *_, n=child_name: order.append(n))
        for child_name, child in blocks[0].named_children()
        if child_name in (*branch, "downsample")
    ]
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    for h in handles:
        h.remove()
    assert order.count("downsample") == 1, order
    after = order[order.index("downsample") + 1 :]
    assert not set(after) & set(branch), f"{name}: shortcut made before {after}: {order}"
