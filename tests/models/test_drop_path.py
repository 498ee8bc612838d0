"""drop_path_rate is honoured (stochastic depth in the residual branches) or refused.

A family with residual branches puts per-sample branch dropping into them, on the
schedule its paper uses (up to ``drop_path_rate``); a family without any raises a
ValueError instead of silently ignoring the argument.
"""

from __future__ import annotations

import pytest
import torch

from archbench.layers import DropPath
from archbench.models import create_model, get_model_card, list_models
from archbench.models.nasnet import ScheduledDropPath

CPU_MODELS = list_models(scale="cpu")
# families without residual branches, which refuse a non-zero drop_path_rate
REFUSING = {
    "allconv",
    "inception_v3",
    "inception_v4",
    "kan_mlp",
    "kan_vgg",
    "mlp_baseline",
    "mobileone",
    "parnet",
    "vgg",
}
# families that draw random numbers in training besides stochastic depth (SReT's token
# permutation in recursive passes, WideNet's router noise, DiT's Gumbel routing gates)
RANDOM_IN_TRAINING = {"sret", "widenet", "dit_routing"}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _stochastic_depth(model: torch.nn.Module) -> list[tuple[torch.nn.Module, float]]:
    found = []
    for m in model.modules():
        if isinstance(m, DropPath) and m.drop_prob > 0:
            found.append((m, m.drop_prob))
        elif isinstance(m, ScheduledDropPath) and m.max_rate > 0:
            found.append((m, m.max_rate))
    return found


def _train_logits(model: torch.nn.Module, x: torch.Tensor, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    with torch.no_grad():
        y = model(x)
    return y[0] if isinstance(y, tuple) else y


@pytest.mark.parametrize("name", CPU_MODELS)
def test_drop_path_rate_is_honoured_or_refused(name):
    family = get_model_card(name).family
    if family in REFUSING:
        with pytest.raises(ValueError, match="no residual branches to drop"):
            create_model(name, drop_path_rate=0.5)
        return
    torch.manual_seed(0)
    plain = create_model(name, num_classes=5, drop_path_rate=0.0).train()
    torch.manual_seed(0)
    dropping = create_model(name, num_classes=5, drop_path_rate=0.5).train()
    assert not _stochastic_depth(plain)
    modules = _stochastic_depth(dropping)
    assert modules and max(rate for _, rate in modules) <= 0.5 + 1e-9
    with torch.no_grad():  # no branch may start as zero (zero-initialised last norms, heads)
        noise = torch.Generator().manual_seed(0)
        for p in plain.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=noise))
    dropping.load_state_dict(plain.state_dict())  # same weights: only the branch drops differ

    size = get_model_card(name).img_size
    x = torch.randn(2, plain.in_chans, size, size)
    with torch.no_grad():  # no stochastic depth at evaluation
        torch.testing.assert_close(dropping.eval()(x), plain.eval()(x))
    plain.train()
    dropping.train()
    if family not in RANDOM_IN_TRAINING:
        reference = _train_logits(plain, x, seed=1)
        assert torch.equal(reference, _train_logits(plain, x, seed=2))  # nothing else random

    # every stochastic-depth module runs in the forward pass and drops whole samples
    called, drops = set(), [0]

    def count(module, inputs, output):
        called.add(id(module))
        kept = output.flatten(1).abs().sum(1) > 0
        drops[0] += int((~kept & (inputs[0].flatten(1).abs().sum(1) > 0)).sum())

    hooks = [m.register_forward_hook(count) for m, _ in modules]
    outputs = [_train_logits(dropping, x, seed=s) for s in (1, 2, 3)]
    for h in hooks:
        h.remove()
    assert len(called) == len(modules) and drops[0] > 0
    assert any(not torch.equal(outputs[0], y) for y in outputs[1:])


def test_every_registered_family_is_covered():
    families = {get_model_card(n).family for n in list_models()}
    assert REFUSING <= families
    assert families <= {get_model_card(n).family for n in CPU_MODELS}


def test_a_configuration_without_shortcuts_refuses_too():
    """VoVNet v1 has no residual blocks; its V2 adds shortcuts that stochastic depth drops."""
    with torch.device("meta"):
        with pytest.raises(ValueError, match=r"VoVNet has no residual branches .*residual=False"):
            create_model("vovnet39", drop_path_rate=0.1)
        v2 = create_model("vovnet39_v2", drop_path_rate=0.1)
    blocks = [b for stage in v2.stages for b in stage if hasattr(b, "residual")]
    assert all(isinstance(b.drop_path, DropPath) == b.residual for b in blocks)
