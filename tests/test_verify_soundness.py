"""Cross-method soundness suite (issue 4): on many seeded random small networks, per example and target class,

    IBP, CROWN, dual  <=  LP  <=  MILP  <=  margin at any point of the ball (random, vertices, PGD),

with the LP given the elementwise tightest intermediate bounds of the methods it is compared with; plus
alpha-CROWN >= CROWN, lp = lp-cvxpy, the MILP minimum independent of the bounds feeding its big-M, the MILP
minimizer replayed through the torch model, CROWN <= alpha-CROWN <= LP with intermediate bounds held fixed
(and equality on one-hidden-layer networks), and an exhaustive grid check on 2-D inputs.
"""
import numpy as np
import pytest
import torch
from torch import nn

from robustopt.attacks import pgd
from robustopt.sets import Ball
from robustopt.verify import certify, network, run_method
from robustopt.verify.api import margin_spec
from robustopt.verify.methods import tightest
from verify_helpers import one_thread, randomized, relu_mlp, sampled_margins  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
LP_TOL = 1e-7  # the LP is solved to feasibility 1e-9; its rigorous bound may sit that far below the optimum


def tiny_net(seed, widths=(4, 8)):
    """A random ReLU net with 2-4 affine layers: an MLP on 2-6 inputs (hidden widths in ``widths``) or, for
    every fourth seed, a conv net on (c, 6, 6). Weights large enough to mix stable and unstable ReLUs."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    k = int(rng.integers(2, 5))
    if seed % 4 == 3:
        c, ch = int(rng.integers(1, 3)), int(rng.integers(2, 4))
        layers = [nn.Conv2d(c, ch, 3, stride=2, padding=int(rng.integers(0, 2))), nn.ReLU(), nn.Flatten()]
        flat = layers[0](torch.zeros(1, c, 6, 6)).numel()
        if rng.random() < 0.5:
            w = int(rng.integers(*widths))
            layers += [nn.Linear(flat, w), nn.ReLU()]
            flat = w
        model, shape = nn.Sequential(*layers, nn.Linear(flat, k)), (c, 6, 6)
    else:
        d = int(rng.integers(2, 7))
        model, shape = relu_mlp(d, rng.integers(widths[0], widths[1] + 1, size=int(rng.integers(1, 4))), k), (d,)
    return randomized(model, gen), shape, k


def instance(seed, n=2, widths=(4, 8)):
    model, shape, k = tiny_net(seed, widths)
    rng = np.random.default_rng(10_000 + seed)
    x = torch.as_tensor(rng.uniform(0, 1, size=(n, *shape)))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[1::2] = torch.as_tensor(rng.integers(0, k, size=len(y[1::2])))  # some examples with a wrong label
    norm = ("inf", 1)[seed % 2]
    eps = float(rng.uniform(0.02, 0.15)) * (1 if norm == "inf" else 3)
    return model, x, y, k, norm, eps


def row_margins(model, points, y, k):
    """Margins f_y - f_j at points (n, ...) in margin_spec's row order, (n, k-1)."""
    with torch.no_grad():
        return torch.einsum("nmk,nk->nm", margin_spec(y, k), model(points))


def as_rows(margins, y):
    """(n, k) margins with +inf in column y -> (n, k-1) in margin_spec's row order."""
    keep = torch.ones_like(margins, dtype=torch.bool).scatter(1, y.view(-1, 1), False)
    return margins[keep].view(len(y), -1)


def sampled_upper(model, x, y, k, eps, norm):
    """Per row, the smallest margin over sampled points of the ball and a PGD point, (n, k-1)."""
    adv = pgd(model, x, y, eps, norm=norm, steps=30, loss="margin", seed=0).x_adv
    assert Ball(eps, norm).contains(adv, x).all()
    return torch.minimum(as_rows(sampled_margins(model, x, y, eps, norm, samples=16), y), row_margins(model, adv, y, k))


def chain(seed, widths=(4, 8), cvxpy=False):
    model, x, y, k, norm, eps = instance(seed, widths=widths)
    net = network(model, input_shape=x.shape[1:]).with_spec(margin_spec(y, k))
    ball = Ball(eps, norm)
    run = lambda name, **kw: run_method(name, net, x, ball, compute_upper=False, **kw)
    ibp, crown, dual = (run(m, return_intermediate=True) for m in ("ibp", "crown", "dual"))
    alpha = run("alpha-crown", steps=10)
    inter = tightest(ibp.intermediate, crown.intermediate, dual.intermediate)
    lp = run("lp", intermediate=inter)
    milp = run("milp", intermediate=inter)
    upper = sampled_upper(model, x, y, k, eps, norm)
    lp_raw = lp.info["solver_lower"]
    assert (lp.status == "optimal").all() and (milp.status == "optimal").all()
    for cheap in (ibp, crown, dual):
        assert (cheap.lower <= lp_raw + LP_TOL).all()
    margin = torch.as_tensor(milp.margin).unsqueeze(1)
    assert (lp_raw <= milp.lower + margin + LP_TOL).all()
    assert (milp.lower <= upper + 1e-9).all()
    assert (alpha.lower >= crown.lower - 1e-12).all()
    # with the LP's intermediate bounds held fixed: CROWN <= alpha-CROWN <= LP (+1e-6)
    crown_fixed, alpha_fixed = (run(m, intermediate=inter, **kw).lower for m, kw in (("crown", {}),
                                                                                      ("alpha-crown", {"steps": 10})))
    assert (crown_fixed <= alpha_fixed + 1e-12).all() and (alpha_fixed <= lp_raw + 1e-6).all()
    for method in (ibp, crown, dual, alpha, lp, milp):
        assert (method.lower <= upper + 1e-9).all()
    # the MILP minimizer, replayed through the torch model, reproduces the MILP's value
    pts = milp.points.view(*milp.points.shape[:2], *x.shape[1:])
    for r in range(k - 1):
        replayed = row_margins(model, pts[:, r], y, k)[:, r]
        assert np.allclose(replayed.numpy(), milp.info["objective"][:, r], atol=1e-6, rtol=0)
        assert (milp.lower[:, r] <= replayed + 1e-12).all()
    # the MILP minimum does not depend on the bounds feeding its big-M (IBP's are the loosest)
    loose = run("milp", intermediate=ibp.intermediate)
    assert np.allclose(loose.replayed, milp.replayed, atol=2e-6, rtol=1e-6)
    assert (loose.lower <= torch.as_tensor(milp.replayed) + 1e-12).all()
    if cvxpy:
        other = run("lp-cvxpy", intermediate=inter)
        assert torch.allclose(other.info["solver_lower"], lp_raw, atol=1e-5, rtol=0)
    return model, net, x, ball, inter


@pytest.mark.parametrize("seed", range(100))
def test_chain_ibp_crown_dual_lp_milp_attack(seed):
    chain(seed, cvxpy=seed % 5 == 0)  # both norms: the norm alternates with the seed


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 400))
def test_chain_wider_nets(seed):
    chain(seed, widths=(8, 32), cvxpy=seed % 5 == 0)


@pytest.mark.parametrize("seed", range(16))
def test_alpha_crown_reaches_lp_on_one_hidden_layer(seed):
    """With CROWN's intermediate bounds held fixed, alpha-CROWN's optimum is the triangle LP on
    one-hidden-layer networks (min-max: the bound is concave in the slopes); 300 steps get within 1e-4."""
    gen = torch.Generator().manual_seed(seed)
    norm = ("inf", 1)[seed % 2]
    d, k = 2 + seed % 5, 3
    model = nn.Sequential(nn.Linear(d, 12), nn.ReLU(), nn.Linear(12, k)).double()
    for p in model.parameters():
        p.data = torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.8
    x = torch.rand(2, d, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, seed % k])
    net = network(model).with_spec(margin_spec(y, k))
    ball = Ball(0.1 * (1 if norm == "inf" else 3), norm)
    inter = run_method("crown", net, x, ball, compute_upper=False, return_intermediate=True).intermediate
    lp = run_method("lp", net, x, ball, compute_upper=False, intermediate=inter).info["solver_lower"]
    alpha = run_method("alpha-crown", net, x, ball, compute_upper=False, intermediate=inter, steps=300, lr=0.1).lower
    assert (alpha <= lp + 1e-6).all()
    assert torch.allclose(alpha, lp, atol=1e-4, rtol=0)


def _lipschitz_inf(model):
    """An l_inf -> |.| Lipschitz constant of every margin row: max over rows of || |c W_K| ... |W_1| ||_1."""
    weights = [m.weight.detach() for m in model if isinstance(m, nn.Linear)]
    k = weights[-1].shape[0]
    rows = torch.cat([torch.eye(k, dtype=torch.float64)[None, i] - torch.eye(k, dtype=torch.float64)
                      for i in range(k)])
    acc = (rows @ weights[-1]).abs()
    for w in reversed(weights[:-1]):
        acc = acc @ w.abs()
    return float(acc.sum(1).max())


@pytest.mark.parametrize("seed", range(8))
def test_milp_against_exhaustive_grid(seed):
    """2-D inputs: the MILP minimum is <= every grid value and >= the grid minimum minus a Lipschitz slack."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    for p in model.parameters():
        p.data = torch.randn(p.shape, generator=gen, dtype=torch.float64)
    x = torch.rand(1, 2, generator=gen, dtype=torch.float64)
    y = torch.tensor([seed % 3])
    eps, steps = 0.2, 401
    ball = Ball(eps, "inf")
    lo, hi = (b[0] for b in ball.box(x))
    g0, g1 = (torch.linspace(lo[i], hi[i], steps, dtype=torch.float64) for i in range(2))
    grid = torch.stack(torch.meshgrid(g0, g1, indexing="ij"), -1).reshape(-1, 2)
    values = row_margins(model, grid, y.expand(len(grid)), 3)  # (points, 2)
    net = network(model).with_spec(margin_spec(y, 3))
    milp = run_method("milp", net, x, ball, compute_upper=False)
    spacing = float(max(hi - lo)) / (steps - 1)
    slack = _lipschitz_inf(model) * spacing / 2
    exact = torch.as_tensor(milp.replayed[0])
    assert (exact <= values.amin(0) + 1e-9).all()
    assert (exact >= values.amin(0) - slack).all()
    assert (milp.lower[0] <= exact + 1e-10).all() and (milp.lower[0] >= exact - 1e-5).all()


@pytest.mark.parametrize("seed", range(6))
def test_certify_milp_verdicts_match_exact_minimum(seed):
    model, x, y, k, norm, eps = instance(seed + 500, n=6)
    res = certify(model, x, y, eps, norm=norm, method="milp", progress=False)
    net = network(model, input_shape=x.shape[1:]).with_spec(margin_spec(y, k))
    exact = run_method("milp", net, x, Ball(eps, norm), compute_upper=False)
    minimum = torch.as_tensor(exact.replayed).amin(1)
    ball = Ball(eps, norm)
    for i, status in enumerate(res.status):
        if status == "certified":
            assert exact.lower[i].amin() > 0 and minimum[i] > 0
        elif status == "falsified":
            cex = res.counterexample[i].unsqueeze(0)
            assert ball.contains(cex, x[i:i + 1]).all()
            assert row_margins(model, cex, y[i:i + 1], k).amin() <= 0
        else:  # only a minimum within the MILP's margin of 0 can stay unknown
            assert abs(float(minimum[i])) <= 1e-5
