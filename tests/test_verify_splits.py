"""Per-neuron splits (branch-and-bound domains) and beta-CROWN: soundness against an exact MILP over each
split domain, infeasible domains, completeness of beta-CROWN over all full split assignments, warm starts."""
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from robustopt.sets import Ball
from robustopt.verify import METHODS, network, run_method
from robustopt.verify.api import margin_spec
from robustopt.verify.backward import refine
from split_reference import exact_minimum, interval_bounds
from verify_helpers import one_thread, random_instance, randomized  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

SPLIT_METHODS = [("ibp", {}), ("crown", {}), ("dual", {}), ("alpha-crown", {"steps": 5}),
                 ("beta-crown", {"steps": 10}), ("lp", {}), ("milp", {})]


def _instance(seed, box, shared=False):
    model, x, y, k, norm, eps = random_instance(seed, n=3)
    if norm == 2:  # the MILP reference is polyhedral: l_inf or l_1
        norm, eps = "inf", eps / 2
    C = margin_spec(y, k)
    net = network(model, input_shape=x.shape[1:]).with_spec(C[0] if shared else C)
    ball = Ball(eps, norm, *((0.0, 1.0) if box else (None, None)))
    return net, x.flatten(1), ball


def _random_splits(net, x, ball, seed, fraction=0.4):
    """Split a random part of the neurons CROWN leaves unstable (and, rarely, a stable one the wrong way,
    which makes the domain empty)."""
    gen = torch.Generator().manual_seed(seed)
    inter = run_method("crown", net, x, ball, return_intermediate=True).intermediate
    splits = []
    for lo, hi in inter:
        unstable = (lo < 0) & (hi > 0)
        pick = unstable & (torch.rand(lo.shape, generator=gen) < fraction)
        sign = torch.where(torch.rand(lo.shape, generator=gen) < 0.5, 1, -1)
        wrong = ~unstable & (torch.rand(lo.shape, generator=gen) < 0.02)
        splits.append((torch.where(pick, sign, 0) + torch.where(wrong, torch.where(lo >= 0, -1, 1), 0)).to(torch.int8))
    return splits


@pytest.mark.parametrize("box", [True, False])
@pytest.mark.parametrize("seed", range(12))
def test_split_bounds_are_below_the_exact_minimum_over_the_domain(seed, box):
    net, x, ball = _instance(seed, box)
    splits = _random_splits(net, x, ball, seed)
    big_m = interval_bounds(net, x, ball)
    lower, upper = (ball.lower, ball.upper)
    results = {m: run_method(m, net, x, ball, compute_upper=False, splits=splits, **o) for m, o in SPLIT_METHODS}
    # the branch-and-bound path: the parent's (unsplit) bounds given, the layers after the first split recomputed
    parent = run_method("crown", net, x, ball, return_intermediate=True).intermediate
    results |= {m + " (parent bounds)": run_method(m, net, x, ball, compute_upper=False, splits=splits,
                                                   intermediate=parent, **o) for m, o in SPLIT_METHODS}
    # ... or recomputed from a later layer only (any layer is sound; branch and bound: the new split's)
    results |= {f"{m} (parent bounds, from layer {k})": run_method(m, net, x, ball, compute_upper=False,
                                                                   splits=splits, intermediate=parent,
                                                                   recompute_from=k, **o)
                for m, o in SPLIT_METHODS if m in ("crown", "alpha-crown", "beta-crown") for k in (1, len(parent))}
    for i in range(x.shape[0]):
        for r in range(net.out_features):
            c = np.eye(net.out_features)[r]
            exact = exact_minimum(net, i, x[i].numpy(), c, ball.eps, ball.norm, lower, upper, big_m[i],
                                  [s[i].numpy() for s in splits])
            for method, res in results.items():
                assert res.lower[i, r] <= exact + 1e-7, (method, i, r, float(res.lower[i, r]), exact)
                if bool(res.infeasible[i]):
                    assert exact == np.inf, method  # flagged empty: the MILP agrees
            milp = float(results["milp"].lower[i, r])
            if np.isfinite(exact):  # exact over the domain: the MILP's program adds the split rows
                assert milp >= exact - 1e-6 * max(1.0, abs(exact)), (i, r, milp, exact)
    crown, beta = results["crown"].lower, results["beta-crown"].lower
    assert (beta >= crown - 1e-9).all()
    lp, milp = results["lp"].lower, results["milp"].lower
    assert (lp <= milp + 1e-7).all() and (lp >= crown - 1e-7).all()
    if seed % 4 == 0:  # the cvxpy formulation states the same split rows
        cvx = run_method("lp-cvxpy", net, x, ball, compute_upper=False, splits=splits).lower
        finite = torch.isfinite(lp)
        torch.testing.assert_close(cvx[finite], lp[finite], rtol=0, atol=1e-5)
        assert torch.equal(torch.isinf(cvx), torch.isinf(lp))


@pytest.mark.parametrize("seed", [0, 1, 4, 5, 7, 9])
def test_recomputing_after_the_new_split_only_equals_recomputing_after_the_first(seed, monkeypatch):
    """Branch and bound's shortcut: a child split on the last ReLU layer, given its parent's bounds (which reflect
    the older splits), needs no intermediate layer bounded again (``recompute_from``): the same output bounds as
    re-bounding every layer after the first split one, with no intermediate backward pass."""
    from robustopt.verify import crown

    net, x, ball = _instance(seed, True)
    L = len(net.relu_sizes)
    assert L >= 2
    gen = torch.Generator().manual_seed(seed)
    root = run_method("crown", net, x, ball, return_intermediate=True).intermediate

    def split_some(lo, hi, sign):
        return torch.where((lo < 0) & (hi > 0) & (torch.rand(lo.shape, generator=gen) < 0.5), sign, 0).to(torch.int8)

    splits = [split_some(*root[0], 1)] + [torch.zeros_like(lo, dtype=torch.int8) for lo, _ in root[1:]]
    parent = run_method("crown", net, x, ball, splits=splits, intermediate=root, return_intermediate=True)
    child = splits[:-1] + [split_some(*parent.intermediate[-1], -1)]
    assert child[-1].any() and child[0].any()
    passes = []
    monkeypatch.setattr(crown, "refine", lambda *a, **k: passes.append(1) or refine(*a, **k))
    for method, opts in (("crown", {}), ("beta-crown", {"steps": 10, "optimize_intermediate": False})):
        full, shortcut = (run_method(method, net, x, ball, splits=child, intermediate=parent.intermediate,
                                     compute_upper=False, **opts, **extra) for extra in ({}, {"recompute_from": L}))
        torch.testing.assert_close(shortcut.lower, full.lower, rtol=1e-9, atol=1e-9)
    assert len(passes) == 2 * (L - 1)  # only the full recomputations bounded layers 1..L-1
    with pytest.raises(ValueError, match="recompute_from"):
        run_method("crown", net, x, ball, intermediate=root, splits=child, recompute_from=-1)


def test_infeasible_domain_is_flagged_not_raised():
    net, x, ball = _instance(0, True)
    inter = run_method("ibp", net, x, ball, return_intermediate=True).intermediate
    splits = [torch.zeros(lo.shape, dtype=torch.int8) for lo, _ in inter]
    lo0, hi0 = inter[0]
    j = int(torch.nonzero((hi0[1] < 0) | (lo0[1] > 0))[0])  # a stable neuron of example 1, split the wrong way
    splits[0][1, j] = -1 if lo0[1, j] > 0 else 1
    for method, opts in SPLIT_METHODS:
        res = run_method(method, net, x, ball, splits=splits, **opts)
        assert res.infeasible.tolist() == [False, True, False], method
        assert torch.isinf(res.lower[1]).all() and (res.lower[1] > 0).all()
        assert torch.isinf(res.upper[1]).all() and (res.upper[1] < 0).all()
        assert torch.isfinite(res.lower[[0, 2]]).all()
    # intermediate bounds with lower > upper prove the domain empty too (no exception)
    given = [(lo.clone(), hi.clone()) for lo, hi in inter]
    given[0][0][2, 0] = given[0][1][2, 0] + 1.0
    res = run_method("crown", net, x, ball, intermediate=given)
    assert res.infeasible.tolist() == [False, False, True]


def test_splits_are_validated():
    net, x, ball = _instance(1, True)
    sizes = net.relu_sizes
    good = [torch.zeros(3, h, dtype=torch.int8) for h in sizes]
    with pytest.raises(ValueError, match="splits must be a list"):
        run_method("crown", net, x, ball, splits=good[:-1] if len(good) > 1 else [])
    with pytest.raises(ValueError, match=r"splits\[0\] must be an integer tensor of shape"):
        run_method("crown", net, x, ball, splits=[torch.zeros(3, sizes[0] + 1, dtype=torch.int8)] + good[1:])
    bad = [g.clone() for g in good]
    bad[0][0, 0] = 2
    with pytest.raises(ValueError, match="values must be -1"):
        run_method("crown", net, x, ball, splits=bad)
    for method in ("lp", "milp"):
        with pytest.raises(ValueError, match="values must be -1"):
            run_method(method, net, x, ball, splits=bad)
    assert "beta-crown" in METHODS


def _tiny(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3)).double()
    for p in model.parameters():
        p.data = torch.randn(p.shape, dtype=torch.float64) * (1.0 if p.dim() > 1 else 0.3)
    return model.eval()


COMPLETE_CASES = [(0, "inf"), (1, 1)] + [pytest.param(s, n, marks=pytest.mark.slow)
                                         for s, n in [(1, "inf"), (2, "inf"), (3, "inf"), (0, 1), (2, 1), (3, 1)]]


@pytest.mark.parametrize("seed,norm", COMPLETE_CASES)
def test_beta_crown_is_complete_over_all_split_assignments(seed, norm):
    """min over every full assignment of the unstable neurons of the beta-CROWN bound = the exact minimum.
    Each domain starts from the parent's (unsplit) CROWN bounds, as branch and bound does, so every neuron
    is stable or split and the domain's bound is a Lagrangian dual of a linear program: exact at the optimum
    (the multipliers need a few thousand small steps to get within 1e-6 of it)."""
    model = _tiny(seed)
    x = torch.rand(1, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    y = torch.tensor([seed % 3])
    net = network(model).with_spec(margin_spec(y, 3)[0])  # shared rows: every domain is the same example
    ball = Ball(0.4 if norm == "inf" else 0.6, norm, None, None)
    inter = run_method("crown", net, x, ball, return_intermediate=True).intermediate
    unstable = [(k, j) for k, (lo, hi) in enumerate(inter) for j in range(lo.shape[1]) if lo[0, j] < 0 < hi[0, j]]
    assert 1 <= len(unstable) <= 7
    assignments = list(itertools.product((-1, 1), repeat=len(unstable)))
    splits = [torch.zeros(len(assignments), h, dtype=torch.int8) for h in net.relu_sizes]
    for d, signs in enumerate(assignments):
        for (k, j), s in zip(unstable, signs):
            splits[k][d, j] = s
    xs = x.expand(len(assignments), -1)
    parent = [(lo.expand(len(assignments), -1), hi.expand(len(assignments), -1)) for lo, hi in inter]
    res = run_method("beta-crown", net, xs, ball, compute_upper=False, splits=splits, intermediate=parent,
                     steps=3000, lr=0.5, lr_decay=0.996)
    big_m = interval_bounds(net, x, ball)[0]
    for r in range(net.out_features):
        c = np.eye(net.out_features)[r]
        exact = exact_minimum(net, 0, x[0].numpy(), c, ball.eps, norm, None, None, big_m)
        assert abs(float(res.lower[:, r].min()) - exact) <= 1e-6, (r, float(res.lower[:, r].min()), exact)


def test_alpha_warm_start_and_float32_search():
    net, x, ball = _instance(4, True, shared=True)
    crown = run_method("crown", net, x, ball).lower
    first = run_method("alpha-crown", net, x, ball, steps=15)
    assert (first.lower >= crown - 1e-12).all() and first.alphas is not None
    assert set(first.alphas.values) >= {(len(net.relu_sizes), i) for i in range(len(net.relu_sizes))}
    again = run_method("alpha-crown", net, x, ball, steps=0, alphas=first.alphas)  # step 0 evaluates the warm slopes
    cold = run_method("alpha-crown", net, x, ball, steps=0)
    torch.testing.assert_close(cold.lower, crown, rtol=0, atol=1e-12)
    assert again.lower.sum() > crown.sum() + 1e-6
    more = run_method("alpha-crown", net, x, ball, steps=15, alphas=first.alphas)
    assert more.lower.sum() >= again.lower.sum() - 1e-9
    sub = first.alphas.select(torch.tensor([0, 2]))
    part = run_method("alpha-crown", net, x[[0, 2]], ball, steps=0, alphas=sub)
    whole = run_method("alpha-crown", net, x, ball, steps=0, alphas=first.alphas)
    torch.testing.assert_close(part.lower, whole.lower[[0, 2]])
    with pytest.raises(ValueError, match="alphas must be the Slopes"):
        run_method("alpha-crown", net, x, ball, alphas=[1.0])
    # float32 search, float64 result: sound below sampled points, never below CROWN
    f32 = run_method("alpha-crown", net, x, ball, steps=15, search_dtype=torch.float32)
    assert f32.lower.dtype == torch.float64 and (f32.lower >= crown - 1e-12).all()
    pts = torch.stack([ball.random(x) for _ in range(200)])
    values = torch.stack([net(p) for p in pts]).amin(0)
    assert (f32.lower <= values + 1e-9).all() and (first.lower <= values + 1e-9).all()
    # floor=False: the one pass with the slopes found (the floor pass only raises the bound)
    bare = run_method("alpha-crown", net, x, ball, steps=15, search_dtype=torch.float32, floor=False)
    assert (bare.lower <= f32.lower + 1e-12).all() and (bare.lower <= values + 1e-9).all()
    with pytest.raises(ValueError, match="floor must be True or False"):
        run_method("alpha-crown", net, x, ball, floor=1)


def test_margin_bounds_takes_splits_across_batches():
    from robustopt.verify import margin_bounds

    model, x, y, k, norm, eps = random_instance(7, n=5)
    net = network(model, input_shape=x.shape[1:])
    inter = margin_bounds(model, x, y, eps, norm, method="crown", return_intermediate=True)[1]
    gen = torch.Generator().manual_seed(0)
    splits = [torch.where((lo < 0) & (hi > 0) & (torch.rand(lo.shape, generator=gen) < 0.5),
                          torch.where(torch.rand(lo.shape, generator=gen) < 0.5, 1, -1), 0).to(torch.int8)
              for lo, hi in inter]
    assert len(splits) == len(net.relu_sizes)
    for method in ("crown", "beta-crown"):
        whole = margin_bounds(model, x, y, eps, norm, method=method, splits=splits)
        parts = margin_bounds(model, x, y, eps, norm, method=method, splits=splits, batch_size=2)
        torch.testing.assert_close(parts, whole, rtol=0, atol=1e-12)


def test_alpha_crown_keeps_crown_bounds_where_slopes_do_not_fit():
    from robustopt.verify.alpha_crown import SLOPE_COPIES, affordable

    widths = {1: 100, 2: 110}  # slopes per row: layer 0's 100 unstable neurons; layers 0 and 1's
    rows = {1: torch.arange(10), 2: torch.arange(5)}
    cost1 = SLOPE_COPIES * 3 * 2 * 10 * 100 * 8  # layer 1: n=3 domains, 2x10 rows, 100 slopes, float64
    cost2 = SLOPE_COPIES * 3 * 2 * 5 * 110 * 8
    assert set(affordable(rows, widths, 3, 8, cost1 + cost2)) == {1, 2}
    assert set(affordable(rows, widths, 3, 8, cost1 + cost2 - 1)) == {2}  # the cheaper layer is kept
    assert affordable(rows, widths, 3, 8, 0) == {}


def test_alpha_crown_window_slopes_equal_whole_layer_slopes(monkeypatch):
    """Slopes of a convolution's rows are kept on the rows' windows (a fraction of the memory): the search and
    a warm start from another radius give the values of whole-layer slopes."""
    from robustopt.verify import alpha_crown

    gen = torch.Generator().manual_seed(3)
    model = randomized(nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1),
                                     nn.ReLU(), nn.Conv2d(5, 3, 2, stride=2), nn.ReLU(), nn.Flatten(),
                                     nn.Linear(48, 4)), gen)
    x = torch.rand(3, 2, 16, 16, generator=gen, dtype=torch.float64)
    net = network(model, input_shape=(2, 16, 16))

    def run(eps, **options):
        return run_method("alpha-crown", net, x.flatten(1), Ball(eps, "inf", 0.0, 1.0), steps=8, **options)

    first, second = run(0.08), run(0.1, alphas=run(0.08).alphas)
    assert first.alphas.windowed == {1, 2}
    assert first.alphas.values[(2, 0)].shape[-1] == 4 * 4 * 4 < net.relu_sizes[0]  # a window, not the layer
    monkeypatch.setattr(alpha_crown, "windowed_layers", lambda net, layers, ball: frozenset())
    whole_first = run(0.08)
    whole_second = run(0.1, alphas=whole_first.alphas)
    assert not whole_first.alphas.windowed
    assert (first.lower > run_method("crown", net, x.flatten(1), Ball(0.08, "inf", 0.0, 1.0)).lower + 1e-6).any()
    for ours, whole in ((first, whole_first), (second, whole_second)):
        torch.testing.assert_close(ours.lower, whole.lower, rtol=0, atol=1e-9)
        torch.testing.assert_close(ours.upper, whole.upper, rtol=0, atol=1e-9)
