"""minquant.nn.optim: SGD and Adam step for step against torch.optim."""

import numpy as np
import pytest

from minquant import nn


def _run(make_ours, make_torch, steps: int = 5):
    """Apply both optimisers to the same parameters and gradients; return both results."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    start = [rng.normal(size=(3, 4)), rng.normal(size=(4,))]
    grads = [[rng.normal(size=a.shape) for a in start] for _ in range(steps)]
    ours = [nn.Parameter(a, dtype=np.float64) for a in start]
    theirs = [torch.tensor(a, requires_grad=True) for a in start]
    opt, opt_t = make_ours(ours), make_torch(torch, theirs)
    for step_grads in grads:
        opt.zero_grad()
        opt_t.zero_grad()
        for p, p_t, g in zip(ours, theirs, step_grads, strict=True):
            p.grad += g
            p_t.grad = torch.tensor(g)
        opt.step()
        opt_t.step()
    for p, p_t in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(p.data, p_t.detach().numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.torch
@pytest.mark.parametrize(("momentum", "weight_decay"), [(0.0, 0.0), (0.9, 0.0), (0.9, 1e-2)])
def test_sgd_matches_torch(momentum, weight_decay):
    _run(
        lambda ps: nn.SGD(ps, lr=0.1, momentum=momentum, weight_decay=weight_decay),
        lambda torch, ps: torch.optim.SGD(ps, lr=0.1, momentum=momentum, weight_decay=weight_decay),
    )


@pytest.mark.torch
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_adam_matches_torch(weight_decay):
    _run(
        lambda ps: nn.Adam(ps, lr=0.01, betas=(0.8, 0.99), weight_decay=weight_decay),
        lambda torch, ps: torch.optim.Adam(
            ps, lr=0.01, betas=(0.8, 0.99), weight_decay=weight_decay
        ),
        steps=7,
    )


def test_sgd_without_momentum_is_plain_gradient_descent():
    p = nn.Parameter(np.array([1.0, -2.0]), dtype=np.float64)
    opt = nn.SGD([p], lr=0.5)
    p.grad[:] = [2.0, 4.0]
    opt.step()
    assert p.data.tolist() == [0.0, -4.0]


def test_adam_first_step_moves_each_weight_by_lr():
    # after bias correction the first update is lr * g / (|g| + eps): the sign of g, times lr
    p = nn.Parameter(np.array([1.0, 1.0, 1.0]), dtype=np.float64)
    g = np.array([1e-3, -5.0, 1e3])
    p.grad[:] = g
    nn.Adam([p], lr=0.1, eps=1e-8).step()
    np.testing.assert_allclose(p.data, 1 - 0.1 * g / (np.abs(g) + 1e-8), rtol=1e-12)
    np.testing.assert_allclose(p.data, [0.9, 1.1, 0.9], rtol=2e-6)


def test_zero_grad_resets_gradients():
    p = nn.Parameter(np.ones(3))
    p.grad += 1
    nn.SGD([p], lr=1.0).zero_grad()
    assert not p.grad.any()


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: nn.SGD([], lr=0.1), "empty parameter list"),
        (lambda: nn.Adam([nn.Parameter(np.ones(1))], lr=0.0), "lr must be > 0, got 0.0"),
    ],
)
def test_bad_optimizer_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()
