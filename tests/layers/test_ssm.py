"""The chunked selective scan agrees with the sequential reference, gradients included."""

from __future__ import annotations

import pytest
import torch

from archbench.layers.ssm import MambaMixer1d, selective_scan, selective_scan_ref


def _inputs(b=2, d=6, n=4, length=37, per_channel=False, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    shape_bc = (b, d, n, length) if per_channel else (b, n, length)
    return dict(
        u=torch.randn(b, d, length, generator=g, dtype=dtype),
        delta=torch.randn(b, d, length, generator=g, dtype=dtype),
        A=-torch.rand(d, n, generator=g, dtype=dtype) * 8,
        B=torch.randn(*shape_bc, generator=g, dtype=dtype),
        C=torch.randn(*shape_bc, generator=g, dtype=dtype),
        D=torch.randn(d, generator=g, dtype=dtype),
        z=torch.randn(b, d, length, generator=g, dtype=dtype),
        delta_bias=torch.randn(d, generator=g, dtype=dtype),
    )


@pytest.mark.parametrize("chunk_size", [1, 5, 16])
@pytest.mark.parametrize("per_channel", [False, True])
def test_chunked_matches_sequential_forward_and_grad(chunk_size, per_channel):
    args = _inputs(per_channel=per_channel)
    ref_args = {k: v.clone().requires_grad_() for k, v in args.items()}
    new_args = {k: v.clone().requires_grad_() for k, v in args.items()}
    y_ref = selective_scan_ref(**ref_args, delta_softplus=True)
    y_new = selective_scan(**new_args, delta_softplus=True, chunk_size=chunk_size)
    torch.testing.assert_close(y_new, y_ref, rtol=1e-4, atol=1e-4)
    w = torch.randn_like(y_ref)
    (y_ref * w).sum().backward()
    (y_new * w).sum().backward()
    for k in args:
        torch.testing.assert_close(new_args[k].grad, ref_args[k].grad, rtol=1e-3, atol=1e-3)


def test_scan_is_the_recurrence():
    # one channel, one state, no softplus: h_t = a h_{t-1} + dt*b*u; y = c*h
    u = torch.tensor([[[1.0, 2.0, 3.0]]])
    delta = torch.full((1, 1, 3), 0.5)
    A = torch.tensor([[-2.0]])  # decay exp(-1) per step
    B = torch.ones(1, 1, 3)
    C = torch.full((1, 1, 3), 2.0)
    a = torch.exp(torch.tensor(-1.0))
    h1 = 0.5
    h2 = a * h1 + 1.0
    h3 = a * h2 + 1.5
    expected = 2 * torch.stack([torch.tensor(h1), h2, h3]).view(1, 1, 3)
    for fn in (selective_scan_ref, selective_scan):
        torch.testing.assert_close(fn(u, delta, A, B, C), expected)


def test_strong_decay_stays_finite_and_matches():
    args = _inputs(length=64, dtype=torch.float32)
    args["delta"] = args["delta"].abs() * 50  # log-decays far below the floor
    y_ref = selective_scan_ref(**args)
    y_new = selective_scan(**args, chunk_size=16)
    assert torch.isfinite(y_new).all()
    torch.testing.assert_close(y_new, y_ref, rtol=1e-4, atol=1e-4)


def test_bad_shapes_and_chunk_size_fail_clearly():
    args = _inputs()
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(**{**args, "A": args["A"][:, :2].T})
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(**{**args, "B": args["B"][:, :, :5]})
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan(**args, chunk_size=0)


def test_mamba_mixer_forms_agree_and_are_causal():
    mixer = MambaMixer1d(16, d_state=4, expand=2).double()
    x = torch.randn(2, 23, 16, dtype=torch.float64)
    y = mixer(x)
    mixer.ssm.use_ref = True
    torch.testing.assert_close(mixer(x), y, rtol=1e-5, atol=1e-5)
    x2 = x.clone()
    x2[:, 15:] += 1.0  # changing the future leaves the past unchanged
    torch.testing.assert_close(mixer(x2)[:, :15], y[:, :15], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(mixer(x2)[:, 15:], y[:, 15:])


def _recurrence(u, delta, A, B, C, D):
    """The S6 recurrence written out in float64, without any floor on the decay."""
    u, delta, A, B, C, D = (t.double() for t in (u, delta, A, B, C, D))
    delta = torch.nn.functional.softplus(delta)
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float64)
    ys = []
    for t in range(u.shape[-1]):
        a = torch.exp(delta[:, :, t, None] * A)  # (B, D, N)
        h = a * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1) + D * u[:, :, t])
    return torch.stack(ys, -1)


def _strong(length=70, dtype=torch.float64):
    args = _inputs(length=length, dtype=dtype)
    args.pop("z"), args.pop("delta_bias")
    args["delta"] = args["delta"] * 4  # softplus(delta) up to ~15: log-decays down to ~-120
    return args


def test_floored_chunked_scan_against_the_unfloored_recurrence():
    args = _strong()
    exact = _recurrence(**args)
    assert (torch.nn.functional.softplus(args["delta"])[..., None] * 8 > 10).any()  # floor binds
    y = selective_scan(**args, delta_softplus=True)
    err = (y - exact).abs().max() / exact.abs().max()
    # the -10 floor keeps exp(-10) = 4.5e-5 of the state where the true decay keeps less
    assert 0 < err < 1e-4
    ref = selective_scan_ref(**args, delta_softplus=True, log_decay_floor=None)
    torch.testing.assert_close(ref, exact, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [5, 32, 37])
def test_exact_path_is_the_unfloored_recurrence(chunk_size):
    args = _strong()
    exact = _recurrence(**args)
    y = selective_scan(**args, delta_softplus=True, exact=True, chunk_size=chunk_size)
    torch.testing.assert_close(y, exact, rtol=1e-12, atol=1e-12)
    # float32 inputs: float32 rounding only
    args32 = {k: v.float() for k, v in args.items()}
    y32 = selective_scan(**args32, delta_softplus=True, exact=True)
    torch.testing.assert_close(y32.double(), exact, rtol=2e-6, atol=2e-6)


def test_exact_path_gradients_match_the_reference():
    args = _strong(length=40)
    a = {k: v.clone().requires_grad_() for k, v in args.items()}
    r = {k: v.clone().requires_grad_() for k, v in args.items()}
    w = torch.randn(2, 6, 40, dtype=torch.float64)
    (selective_scan(**a, delta_softplus=True, exact=True) * w).sum().backward()
    (selective_scan_ref(**r, delta_softplus=True, log_decay_floor=None) * w).sum().backward()
    for k in args:
        torch.testing.assert_close(a[k].grad, r[k].grad, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="exact=True"):
        selective_scan(**args, exact=True, chunk_size=64)
