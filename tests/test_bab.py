"""Branch and bound (``method="bab"``): complete, sound, and within its budgets.

- on seeded random small MLPs and conv nets (l_inf with and without the box, some l_1): ``certify`` verdicts of
  ``bab`` equal the exact MILP's, every falsified example has a counterexample in the ball whose float64 replay
  has margin <= 0; 25 networks by default, 320 more with ``-m slow``;
- without ``stop_at`` the bound is the exact minimum: below the MILP's (and the independent scipy MILP's)
  minimum, and within its gap;
- input splitting on 1- and 2-input networks agrees with a fine grid;
- ``time_limit`` and ``max_domains`` end the search with a sound bound and status "time_limit" (unknown);
- bad options raise ``ValueError``.
"""
import time

import numpy as np
import pytest
import torch
from torch import nn

from robustopt.sets import Ball
from robustopt.verify import certify, margin_bounds, network, run_method
from robustopt.verify.api import margin_spec
from split_reference import exact_minimum, interval_bounds
from verify_helpers import random_net, randomized, relu_mlp

pytestmark = pytest.mark.usefixtures("one_thread")


def _case(seed, n=4):
    """A random net (MLP or conv), inputs in [0, 1] labelled by the net (so the clean point is no counterexample),
    a norm (l_1 for one seed in four), with or without the box, and a radius that leaves work for the solver."""
    model, shape, k = random_net(seed)
    rng = np.random.default_rng(3000 + seed)
    x = torch.as_tensor(rng.uniform(0, 1, size=(n, *shape)))
    with torch.no_grad():
        y = model(x).argmax(1)
    norm = 1 if seed % 4 == 3 else "inf"
    eps = float(rng.uniform(0.05, 0.25)) * (4 if norm == 1 else 1)
    box = (0.0, 1.0) if seed % 2 == 0 else (None, None)
    return model, x, y, norm, eps, box


def _replayed_margin(model, point, y):
    with torch.no_grad():
        logits = model(point.unsqueeze(0).to(torch.float64))[0]
    others = torch.cat([logits[:y], logits[y + 1:]])
    return float(logits[y] - others.max())


def _check_against_milp(seed):
    model, x, y, norm, eps, (lower, upper) = _case(seed)
    kw = dict(lower=lower, upper=upper, progress=False)
    milp = certify(model, x, y, eps, norm, method="milp", **kw)
    bab = certify(model, x, y, eps, norm, method="bab", **kw)
    assert list(bab.status) == list(milp.status), (seed, milp.status, bab.status)
    ball = Ball(eps, norm, lower, upper)
    for i, point in bab.counterexample.items():
        assert bool(ball.contains(point.unsqueeze(0), x[i:i + 1]).all()), (seed, i)
        assert _replayed_margin(model, point, int(y[i])) <= 0, (seed, i)
    return milp.status


SLOW_SEEDS = (9, 13)  # their MILPs take 5-30 s here: in the slow sweep
# 123: an l_1 net with leaves that are empty although beta-CROWN does not flag them (their LP is infeasible; the
# feasibility problem's multipliers prove it)
DEFAULT_SEEDS = [s for s in range(26) if s not in SLOW_SEEDS] + [123]


@pytest.mark.parametrize("seed", DEFAULT_SEEDS)
def test_certify_verdicts_equal_the_milp(seed):
    _check_against_milp(seed)


@pytest.mark.slow
def test_certify_verdicts_equal_the_milp_sweep():
    counts = {}
    for seed in list(SLOW_SEEDS) + [s for s in range(26, 346) if s not in DEFAULT_SEEDS]:
        for s in _check_against_milp(seed):
            counts[s] = counts.get(s, 0) + 1
    assert counts.get("certified", 0) > 100 and counts.get("falsified", 0) > 100, counts


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_exact_minimum_without_stop_at(seed):
    """Without stop_at the bound closes to the best point found: the exact minimum within the relative gap."""
    model, x, y, norm, eps, (lower, upper) = _case(seed, n=2)
    kw = dict(lower=lower, upper=upper)
    milp = margin_bounds(model, x, y, eps, norm, method="milp", **kw)
    bab = margin_bounds(model, x, y, eps, norm, method="bab", **kw)
    finite = torch.isfinite(milp)
    tol = 2e-6 * milp[finite].abs().clamp(min=1)
    assert (bab[finite] <= milp[finite] + tol).all() and (bab[finite] >= milp[finite] - tol).all(), (bab, milp)
    # the independent reference (scipy's MILP, interval big-M) for the first example
    C = margin_spec(y, milp.shape[1])
    net = network(model, input_shape=x.shape[1:]).with_spec(C[:1])
    ball = Ball(eps, norm, lower, upper)
    xf = x[:1].flatten(1)
    big_m = interval_bounds(net, xf, ball)[0]
    rows = [j for j in range(milp.shape[1]) if j != int(y[0])]
    for r, j in enumerate(rows):
        exact = exact_minimum(net, 0, xf[0].numpy(), np.eye(len(rows))[r], eps, norm, lower, upper, big_m)
        assert bab[0, j] <= exact + 1e-7 and bab[0, j] >= exact - 1e-5 * max(1, abs(exact)), (j, bab[0, j], exact)


@pytest.mark.parametrize("seed", [11, 12, 18, 21, 24])  # seeds whose searches split
def test_filtered_smart_branching_verdicts_equal_the_milp(seed):
    model, x, y, norm, eps, (lower, upper) = _case(seed)
    kw = dict(lower=lower, upper=upper, progress=False)
    milp = certify(model, x, y, eps, norm, method="milp", **kw)
    fsb = certify(model, x, y, eps, norm, method="bab", branching="fsb", **kw)
    assert list(fsb.status) == list(milp.status), (seed, milp.status, fsb.status)


@pytest.mark.parametrize("seed", [11, 13])  # seeds whose searches split
@pytest.mark.parametrize("options", [{"search_dtype": torch.float64}, {"recompute_intermediate": True}])
def test_float64_searches_and_recomputed_bounds_equal_the_milp(monkeypatch, seed, options):
    """The alternatives to the defaults (slopes searched in float32, children's pre-activation bounds held at
    their parents') give the MILP's verdicts too: a float64 search, and bounds of the layers after the split
    recomputed (then the children are bounded per layer of their split, from the next layer on)."""
    from robustopt.verify import bab_relu

    calls, recomputed = bab_relu.bound_domains, []

    def recording(net, *args, **kw):
        recomputed.append(kw.get("recompute_from"))
        return calls(net, *args, **kw)

    monkeypatch.setattr(bab_relu, "bound_domains", recording)
    model, x, y, norm, eps, (lower, upper) = _case(seed)
    net = network(model, input_shape=x.shape[1:])
    net = net.with_spec(margin_spec(y, net.out_features)[0])
    x, ball = x.flatten(1), Ball(eps, norm, lower, upper)
    bab = run_method("bab", net, x, ball, compute_upper=False, stop_at=0.0, split="relu", **options)
    milp = run_method("milp", net, x, ball, compute_upper=False, stop_at=0.0)
    assert (bab.lower > 0).all(1).tolist() == (milp.lower > 0).all(1).tolist(), seed
    assert set(bab.status.tolist()) == {"optimal"}
    children = [k for k in recomputed if k is not None]  # the roots have none
    assert children and all(0 < k <= len(net.relu_sizes) for k in children)
    assert (min(children) < len(net.relu_sizes)) == ("recompute_intermediate" in options)


def test_split_bounds_hold_on_each_child():
    """The bounds "fsb" estimates for the two children of a split (the parent's relaxations held, the split
    neuron's exact) lie below the network's values at sampled points of the ball on the child's side."""
    from robustopt.verify.branching import bound_domains, locate, split_bounds

    model, x, y, net, ball = _mlp_instance(4, 6, [16, 16], 4, Ball(0.3, "inf", 0.0, 1.0))
    res, slopes, betas = bound_domains(net, x, ball, steps=5, compute_upper=False)
    lo = torch.cat([b[0] for b in res.intermediate], 1)[0]
    hi = torch.cat([b[1] for b in res.intermediate], 1)[0]
    unstable = torch.nonzero((lo < 0) & (hi > 0)).flatten()
    assert len(unstable) > 4
    gen = torch.Generator().manual_seed(0)
    points = torch.stack([ball.random(x, generator=gen) for _ in range(4000)])[:, 0]
    values = net(points)
    pre, activation = [], points
    for op in net.affine[:-1]:
        pre.append(op.forward(activation))
        activation = torch.relu(pre[-1])
    pre = torch.cat(pre, 1)
    checked = 0
    for flat in unstable[:8]:
        for active in (True, False):
            bound = split_bounds(net, x, ball, res.intermediate, slopes, [None] * len(slopes), flat.view(1),
                                 torch.tensor([active]))
            side = pre[:, flat] >= 0 if active else pre[:, flat] <= 0
            if side.any():  # a side no sampled point reaches has nothing to check
                assert (bound[0] <= values[side].amin(0) + 1e-9).all(), (int(flat), active)
                checked += 1
    assert checked >= 8 and locate(net, unstable[:1])[0].item() == 0


def test_children_are_bounded_on_the_rows_still_open_only(monkeypatch):
    """Rows closed in every popped domain are left out of the children's bounding (they keep their parents'
    bounds): some calls bound fewer rows than the network has, and the verdict is the MILP's."""
    from robustopt.verify import bab_relu

    widths, calls = [], bab_relu.bound_domains

    def counting(net, *args, **kw):
        widths.append(net.out_features)
        return calls(net, *args, **kw)

    monkeypatch.setattr(bab_relu, "bound_domains", counting)
    model, x, y, norm, eps, (lower, upper) = _case(13)  # its 4th example: 3 rows closing at different depths
    net = network(model, input_shape=x.shape[1:]).with_spec(margin_spec(y[3:], 4)[0])
    x, ball = x[3:].flatten(1), Ball(eps, norm, lower, upper)
    bab = run_method("bab", net, x, ball, compute_upper=False, stop_at=0.0, split="relu")
    milp = run_method("milp", net, x, ball, compute_upper=False, stop_at=0.0)
    assert bab.status.tolist() == milp.status.tolist() == ["optimal"]
    assert min(widths) < net.out_features == widths[0] and bool((bab.lower > 0).all()) == bool((milp.lower > 0).all())


def test_threshold_without_stop_at_is_infinite_until_a_point_is_found():
    """Without stop_at a row closes below its best point's value; before any point it is +inf (not NaN:
    inf - gap * inf), so every domain stays open and its rows count as open for branching."""
    from robustopt.verify.bab_search import Search

    model, x, y, net, ball = _mlp_instance(0, 4, [8], 3, Ball(0.1, "inf"))
    search = Search(net, x, ball, None, None, 10, False)
    assert torch.isinf(search.threshold()).all() and (search.threshold() > 0).all()
    search.offer(x)
    value = net(x)[0]
    assert (search.threshold() < value).all() and (search.threshold() > value - 1e-5 * value.abs().clamp(min=1)).all()


def test_crowded_searches_pop_the_domains_nearest_to_closing_and_stay_exact():
    """Past half of max_domains the search pops the domains nearest to closing first; the verdict and the
    bound's side of 0 stay the MILP's (here crowded from the first steps: cap 20, batches of 8)."""
    from robustopt.verify.bab_search import Domains

    domains = Domains(2, torch.zeros(1, dtype=torch.float64))
    lower = torch.tensor([[-3.0, 5.0], [-1.0, -2.0], [-0.5, 1.0], [-4.0, 0.0]], dtype=torch.float64)
    domains.push(lower, torch.zeros(2, dtype=torch.float64), tag=torch.arange(4))
    assert domains.pop(2, torch.zeros(2, dtype=torch.float64), nearest=True)[1]["tag"].tolist() == [2, 1]
    assert domains.pop(1, torch.zeros(2, dtype=torch.float64))[1]["tag"].tolist() == [3]
    model, x, y, norm, eps, (lower, upper) = _case(13)
    net = network(model, input_shape=x.shape[1:]).with_spec(margin_spec(y[3:], 4)[0])
    x, ball = x[3:].flatten(1), Ball(eps, norm, lower, upper)
    crowded = run_method("bab", net, x, ball, compute_upper=False, stop_at=0.0, split="relu", max_domains=20,
                         domain_batch=8)
    milp = run_method("milp", net, x, ball, compute_upper=False, stop_at=0.0)
    assert crowded.status.tolist() == ["optimal"] and crowded.info["domains"][0] > 20
    assert bool((crowded.lower > 0).all()) == bool((milp.lower > 0).all())


def test_open_domains_default_to_a_share_of_the_free_memory(monkeypatch):
    """max_domains=None caps the open domains at what fits in a quarter of the free memory, on the CPU at most half
    a core's share; where the free memory cannot be read, DOMAIN_MEMORY; the storage never grows past the cap."""
    from robustopt.verify import bab
    from robustopt.verify.bab_search import Domains

    monkeypatch.setattr(bab, "free_memory", lambda device: 8 << 30)
    monkeypatch.setattr(bab.os, "cpu_count", lambda: 1)
    assert bab.domain_memory("cpu") == 2 << 30
    monkeypatch.setattr(bab.os, "cpu_count", lambda: 8)
    assert bab.domain_memory("cpu") == (8 << 30) // 16
    sized = Domains(2, torch.zeros(1, dtype=torch.float64), memory=1000)  # the cap: what fits, from the first push
    assert sized.capacity is None
    sized.push(-torch.ones(3, 2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64),
               tag=torch.zeros(3, 5, dtype=torch.float32))
    assert sized.capacity == 1000 // (2 * 8 + 5 * 4)
    monkeypatch.setattr(bab, "free_memory", lambda device: None)
    assert bab.domain_memory("cpu") == bab.DOMAIN_MEMORY
    assert bab.free_memory("meta") is None
    domains = Domains(1, torch.zeros(1, dtype=torch.float64), capacity=100)
    for k in (60, 30, 10):
        domains.push(-torch.ones(k, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64), tag=torch.arange(k))
    assert len(domains) == 100 and len(domains.lower) == 100 and len(domains.fields[0]) == 100


def _stopped_search(monkeypatch, model, eps, strategy_class, branching, max_domains, batch):
    """A search on ``model``'s margins around x = 0.5 (l_inf ball of radius ``eps`` in [0, 1]), best first
    throughout, stopped by ``max_domains`` with domains open: (search, strategy, spec-folded net, x)."""
    from robustopt.verify.bab_search import Domains, Search, run

    best_first = Domains.pop
    monkeypatch.setattr(Domains, "pop", lambda self, k, threshold, nearest=False: best_first(self, k, threshold))
    x = torch.full((1, model[0].in_features), 0.5, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    net = network(model).with_spec(margin_spec(y, 3)[0])
    ball = Ball(eps, "inf", 0.0, 1.0)
    strategy = strategy_class(net, x, ball, steps=2, branching=branching, compute_upper=False, intermediate=None)
    search = Search(net, x, ball, None, None, max_domains, False)
    assert run(search, strategy, batch) == "time_limit"  # stopped by max_domains: open domains left
    return search, strategy, net, x


def test_relu_domains_store_only_the_roots_unstable_neurons(monkeypatch):
    """An open ReLU domain stores its splits, bounds, slopes and multipliers only at the neurons unstable at the
    root; unpacked, the other neurons get the root's bounds, no split, zero slopes and multipliers."""
    from robustopt.verify.bab_relu import ReluSplit

    model = randomized(relu_mlp(4, [16, 16], 3), torch.Generator().manual_seed(3))
    search, strategy, _, _ = _stopped_search(monkeypatch, model, 0.3, ReluSplit, "babsr", 40, 8)
    domains = search.domains
    assert len(domains) > 4
    fields = {name: store[:len(domains)] for name, store in zip(domains.names, domains.fields)}
    full = strategy._unpack(fields)
    for k, (lo, hi) in enumerate(strategy.intermediate):
        unstable = (lo[0] < 0) & (hi[0] > 0)
        assert 0 < int(unstable.sum()) < 16
        assert torch.equal(strategy.unstable[k], torch.nonzero(unstable).flatten())
        for name in ("split", "lo", "hi", "slope", "beta"):
            assert fields[f"{name}{k}"].shape[-1] == int(unstable.sum())
            assert full[name][k].shape[-1] == 16
        assert torch.equal(full["lo"][k][:, ~unstable], lo[:, ~unstable].expand(len(domains), -1))
        assert torch.equal(full["hi"][k][:, ~unstable], hi[:, ~unstable].expand(len(domains), -1))
        assert not full["split"][k][:, ~unstable].any() and not full["slope"][k][..., ~unstable].any()
        assert (full["lo"][k] >= lo).all() and (full["hi"][k] <= hi).all()
    assert any(bool(s.any()) for s in full["split"])


def _low_dimensional(seed, d):
    gen = torch.Generator().manual_seed(seed)
    return randomized(relu_mlp(d, [12, 12], 3), gen)


def _grid_minimum(model, x, y, eps, d, steps):
    """min margin over a grid of the box [x - eps, x + eps] ∩ [0, 1], and the largest gap a grid cell can hide
    (a Lipschitz bound of the margin times the cell's half-diagonal in l_inf)."""
    axes = [torch.linspace(max(0.0, float(x[j]) - eps), min(1.0, float(x[j]) + eps), steps, dtype=torch.float64)
            for j in range(d)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, d)
    with torch.no_grad():
        logits = model(grid)
    others = logits.clone()
    others[:, y] = -float("inf")
    lipschitz = 2.0
    for layer in model:
        if isinstance(layer, nn.Linear):
            lipschitz *= float(layer.weight.detach().abs().sum(1).max())
    half_cell = max(float(a[1] - a[0]) for a in axes) / 2
    return float((logits[:, y] - others.amax(1)).min()), lipschitz * half_cell


@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("seed", range(5))
def test_input_split_agrees_with_a_grid(seed, d):
    model = _low_dimensional(seed, d)
    rng = np.random.default_rng(seed)
    x = torch.as_tensor(rng.uniform(0, 1, size=(6, d)))
    with torch.no_grad():
        y = model(x).argmax(1)
    eps = 0.15
    result = certify(model, x, y, eps, method="bab", split="input", progress=False, attack=False)
    assert (result.status != "unknown").all()
    for i in range(len(x)):
        truth, hidden = _grid_minimum(model, x[i], int(y[i]), eps, d, 4001 if d == 1 else 301)
        if truth <= 0:  # a grid point breaks the margin
            assert result.status[i] == "falsified", (i, truth)
        elif result.status[i] == "falsified":  # a violation between grid points: it cannot be deep
            assert truth <= hidden, (i, truth, hidden)



def test_input_split_children_keep_their_parents_pre_activation_bounds(monkeypatch):
    """Input-split children start from their parent's pre-activation bounds (their box lies inside it): the
    bounds stored with the open domains contain the pre-activations of points sampled in each box, lie inside the
    root's, keep stable every neuron the box's own CROWN bounds prove stable, and are tighter than those somewhere
    (the parents' bounds were intersected in). Clipping is off here: it shrinks a box after its bounds are
    computed, so the stored bounds are those of the larger box (still true on the clipped one)."""
    from robustopt.verify import bab_input
    from robustopt.verify.bab_input import InputSplit, cover

    monkeypatch.setattr(bab_input, "clip", lambda lo, hi, *rest: (lo, hi))
    model = randomized(relu_mlp(3, [32, 32, 32], 3), torch.Generator().manual_seed(1))
    search, strategy, net, _ = _stopped_search(monkeypatch, model, 0.4, InputSplit, "widest", 60, 32)
    domains = search.domains
    assert len(domains) > 20
    fields = {name: store[:len(domains)] for name, store in zip(domains.names, domains.fields)}
    lo, hi = fields["lo"], fields["hi"]
    gen = torch.Generator().manual_seed(0)
    points = lo + (hi - lo) * torch.rand(50, *lo.shape, generator=gen, dtype=lo.dtype)  # (50, D, d)
    own = run_method("crown", net, *cover(lo, hi), compute_upper=False, return_intermediate=True).intermediate
    activation, tighter = points.reshape(-1, 3), 0
    for k, op in enumerate(net.affine[:-1]):
        z = op.forward(activation).view(50, len(lo), -1)
        stored_lo, stored_hi = fields[f"lo{k}"], fields[f"hi{k}"]
        assert (stored_lo <= z + 1e-9).all() and (z <= stored_hi + 1e-9).all(), k
        own_active, own_inactive = own[k][0] >= 0, own[k][1] <= 0
        assert (stored_lo[own_active] >= 0).all() and (stored_hi[own_inactive] <= 0).all(), k
        root_lo, root_hi = strategy.intermediate[k]
        assert (stored_lo >= root_lo).all() and (stored_hi <= root_hi).all(), k  # nested, as the boxes are
        tighter += int((stored_lo > own[k][0] + 1e-6).sum() + (stored_hi < own[k][1] - 1e-6).sum())
        activation = torch.relu(z).view(-1, z.shape[-1])
    assert tighter > 0


def test_descents_that_find_nothing_back_off():
    """Search.descend: after a descent that improves no incumbent, the next 1, 2, 4, ... calls (up to
    DESCENT_BACKOFF) are skipped; one that improves resets the wait."""
    from robustopt.verify.bab_search import DESCENT_BACKOFF, PGD_STEPS, Search

    model = randomized(relu_mlp(3, [8], 2), torch.Generator().manual_seed(0))
    net = network(model)
    x = torch.full((1, 3), 0.5, dtype=torch.float64)
    ball = Ball(0.1, "inf", 0.0, 1.0)
    search = Search(net, x, ball, None, None, 10, False)
    offers = []
    offer = search.offer
    search.offer = lambda points: (offers.append(len(points)), offer(points))
    search.descend(x, ball, x)  # the first descent improves the empty incumbent
    assert len(offers) == PGD_STEPS and search.descent_every == 1
    ran = []
    for _ in range(64):
        search.best = torch.full_like(search.best, float("-inf"))  # nothing can improve it now
        before = len(offers)
        search.descend(x, ball, x)
        ran.append(len(offers) > before)
    gaps = [j - i for i, j in zip([k for k, r in enumerate(ran) if r], [k for k, r in enumerate(ran) if r][1:])]
    assert ran[0] and gaps[:5] == [2, 4, 8, 16, 16] and DESCENT_BACKOFF == 16
    search.best = torch.full_like(search.best, float("inf"))  # the next descent that runs improves: reset
    while search.descent_wait > 1:
        search.descend(x, ball, x)
    search.descend(x, ball, x)
    assert search.descent_every == 1


def test_corners_of_boxes():
    from robustopt.verify.bab_input import corners

    lo = torch.tensor([[0.0, -1.0, 2.0], [5.0, 5.0, 5.0]], dtype=torch.float64)
    hi = torch.tensor([[1.0, 1.0, 3.0], [6.0, 5.0, 7.0]], dtype=torch.float64)
    points = corners(lo, hi).view(2, 8, 3)
    for i in range(2):
        expected = {tuple(float(v) for v in c) for c in torch.cartesian_prod(*torch.stack([lo[i], hi[i]], 1))}
        assert {tuple(float(v) for v in p) for p in points[i]} == expected

@pytest.mark.parametrize("seed", range(5))
def test_clipped_boxes_keep_every_point_an_open_row_can_fail_at(seed):
    """Input-split clipping: every point of a box where some open row's linear bound is at or below its threshold
    lies in the clipped box; the clipped box lies in the box; closed rows constrain nothing."""
    from robustopt.verify.bab_input import clip

    gen = torch.Generator().manual_seed(seed)
    D, m, d = 40, 3, 4
    lo = torch.rand(D, d, generator=gen, dtype=torch.float64)
    hi = lo + torch.rand(D, d, generator=gen, dtype=torch.float64)
    A = torch.randn(D, m, d, generator=gen, dtype=torch.float64)
    A[:, :, 0] = 0.0  # a coordinate no row depends on stays whole
    c = torch.randn(D, m, generator=gen, dtype=torch.float64)
    theta = torch.zeros(m, dtype=torch.float64)
    open_rows = torch.rand(D, m, generator=gen) < 0.6
    open_rows[:, 0] = True
    new_lo, new_hi = clip(lo, hi, A, c, theta, open_rows)
    assert (new_lo >= lo).all() and (new_hi <= hi).all()
    points = lo + (hi - lo) * torch.rand(20000, D, d, generator=gen, dtype=torch.float64)
    value = torch.einsum("dmj,ndj->ndm", A, points) + c
    failing = ((value <= theta) & open_rows).any(2)
    inside = ((points >= new_lo) & (points <= new_hi)).all(2)
    assert failing.any() and inside[failing].all()
    assert (new_hi - new_lo < hi - lo).any()  # it does clip
    reachable = (torch.minimum(A * lo.unsqueeze(1), A * hi.unsqueeze(1)).sum(2) + c <= theta) & open_rows
    whole = ~reachable.any(1)  # no open row can fail on the box: the box is left as it is
    assert torch.equal(new_lo[whole], lo[whole]) and torch.equal(new_hi[whole], hi[whole])
    assert torch.equal(new_lo[:, 0], lo[:, 0]) and torch.equal(new_hi[:, 0], hi[:, 0])


def _mlp_instance(seed, d, widths, k, ball):
    """(model, x (1, d), its label y, the net with the margin rows folded in, ball): a random d-widths-k MLP
    (:func:`randomized`) and a random point, both seeded."""
    gen = torch.Generator().manual_seed(seed)
    model = randomized(relu_mlp(d, widths, k), gen)
    x = torch.rand(1, d, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    net = network(model).with_spec(margin_spec(y, k)[0])  # shared rows: the net replays any batch
    return model, x, y, net, ball


def test_refined_layer_bounds_are_the_exact_minima_within_the_row_gap():
    """refine_layer's bounds on layer 1 lie inside alpha-CROWN's, are tighter, contain the pre-activations of
    sampled points, and (its searches over this small prefix end well within the time limit) each lies below the
    exact minimum of z or -z that the MILP finds: within ROW_GAP of it, or above 0 where the minimum is (a neuron
    proven stable needs no tighter bound)."""
    from robustopt.verify.refine import ROW_GAP, prefix_network, refine_layer

    model, x, y, net, ball = _mlp_instance(0, 8, [16, 16, 16], 4, Ball(0.2, "inf", 0.0, 1.0))
    inter = run_method("alpha-crown", net, x, ball, compute_upper=False, return_intermediate=True).intermediate
    refined, stable = refine_layer(net, x, ball, inter, 1, time_limit=60.0)
    assert all(a is b for a, b in zip(refined[:1] + refined[2:], inter[:1] + inter[2:]))
    (lo, hi), (old_lo, old_hi) = refined[1], inter[1]
    assert (lo >= old_lo).all() and (hi <= old_hi).all()
    assert float((hi - lo).sum()) < float((old_hi - old_lo).sum()) - 1e-3
    prefix = prefix_network(net, 1)
    z = prefix(torch.cat([ball.random(x) for _ in range(2000)]))
    assert (lo <= z + 1e-9).all() and (z <= hi + 1e-9).all()
    unstable = torch.nonzero((old_lo[0] < 0) & (old_hi[0] > 0)).flatten()
    eye = torch.eye(lo.shape[1], dtype=x.dtype)[unstable]
    exact = run_method("milp", prefix.with_spec(torch.cat([eye, -eye])), x, ball, compute_upper=False,
                       intermediate=inter[:1]).lower[0]
    found = torch.cat([lo[0, unstable], -hi[0, unstable]])
    assert (found <= exact + 1e-6).all()
    positive = exact > 0
    assert (~positive).any()
    assert (found[positive] > 0).all()
    slack = ROW_GAP * exact[~positive].abs().clamp(min=1.0)
    assert (found[~positive] >= exact[~positive] - slack - 1e-6).all()
    assert stable == int((((lo >= 0) | (hi <= 0)) & (old_lo < 0) & (old_hi > 0)).sum())


def test_gap_and_enough_end_a_search_early_with_a_sound_bound():
    """bab's ``gap``: the bound lies within gap * max(1, |minimum|) below the exact minimum (MILP), in fewer
    domains than the default's; ``enough``: a row is closed once its bound exceeds it (still below the minimum)."""
    model, x, y, net, ball = _mlp_instance(3, 8, [16, 16, 16], 4, Ball(0.2, "inf", 0.0, 1.0))
    exact = run_method("milp", net, x, ball, compute_upper=False).lower[0]
    default = run_method("bab", net, x, ball, compute_upper=False, split="relu", refine=False)
    loose = run_method("bab", net, x, ball, compute_upper=False, split="relu", refine=False, gap=0.05)
    assert torch.allclose(default.lower[0], exact, atol=1e-5)
    assert (loose.lower[0] <= exact + 1e-6).all()
    assert (loose.lower[0] >= exact - 0.05 * exact.abs().clamp(min=1.0) - 1e-6).all()
    assert loose.info["domains"][0] < default.info["domains"][0]
    enough = float(exact.min()) - 0.5
    early = run_method("bab", net, x, ball, compute_upper=False, split="relu", refine=False, enough=enough)
    assert (early.lower[0] > enough).all() and (early.lower[0] <= exact + 1e-6).all()
    assert early.info["domains"][0] < default.info["domains"][0]
    with pytest.raises(ValueError, match="gap"):
        run_method("bab", net, x, ball, gap=-1.0)
    with pytest.raises(ValueError, match="enough"):
        run_method("bab", net, x, ball, enough=float("nan"))


@pytest.mark.parametrize("refinable", [True, False])
def test_search_stopped_for_refinement_goes_on(monkeypatch, refinable):
    """With the first search stopped right after its root, the search starts again from pre-activation bounds
    refined by branch and bound (layer 1's tighter than alpha-CROWN's; all of them hold on sampled points), or,
    when no layer has few enough unstable neurons to refine, the first search goes on; either way it proves what
    the MILP proves."""
    from robustopt.verify import bab

    # a net and radius that branch and bound proves robust after some tens of domains
    model, x, y, net, ball = _mlp_instance(3, 10, [24, 24, 24], 4, Ball(0.2, "inf"))
    monkeypatch.setattr(bab, "REFINE_AFTER", 1e-6)
    if not refinable:
        monkeypatch.setattr(bab, "MAX_NEURONS", 0)
    res = run_method("bab", net, x, ball, compute_upper=False, stop_at=0.0, time_limit=20.0, split="relu",
                     return_intermediate=True)
    milp = run_method("milp", net, x, ball, compute_upper=False, stop_at=0.0)
    assert res.status.tolist() == ["optimal"] and bool((res.lower > 0).all()) == bool((milp.lower > 0).all())
    assert res.info["domains"][0] > 1
    points = torch.cat([ball.random(x) for _ in range(500)])
    for (lo, hi), z in zip(res.intermediate, net.pre_activations(points)):  # every layer's bounds hold
        assert (lo <= z + 1e-9).all() and (z <= hi + 1e-9).all()
    alpha = run_method("alpha-crown", net, x, ball, compute_upper=False, return_intermediate=True).intermediate
    (lo, hi), (alpha_lo, alpha_hi) = res.intermediate[1], alpha[1]
    shrunk = float((alpha_hi - alpha_lo).sum() - (hi - lo).sum())
    assert (shrunk > 1e-3) == refinable and (res.info["refined"][0] >= 0)


def _hard_instance():
    return _mlp_instance(0, 20, [48, 48, 48], 10, Ball(0.08, "inf"))


def test_time_limit_and_max_domains_give_sound_unknowns():
    model, x, y, net, ball = _hard_instance()
    crown = run_method("crown", net, x, ball, compute_upper=False).lower
    tic = time.perf_counter()
    res = run_method("bab", net, x, ball, compute_upper=False, time_limit=0.5, split="relu")
    assert time.perf_counter() - tic < 1.5
    assert res.status.tolist() == ["time_limit"] and (res.lower >= crown - 1e-9).all()
    capped = run_method("bab", net, x, ball, compute_upper=False, max_domains=100, domain_batch=32, stop_at=0.0)
    assert capped.status.tolist() == ["time_limit"] and 0 < capped.info["open"][0] <= 100
    sampled = net(torch.stack([ball.random(x) for _ in range(200)])[:, 0]).amin(0)
    assert (res.lower[0] <= sampled + 1e-9).all() and (capped.lower[0] <= sampled + 1e-9).all()
    result = certify(model, x, y, 0.08, method="bab", time_limit=0.5, attack=False, progress=False)
    assert result.status[0] in ("unknown", "falsified") and result.seconds < 3
    # the API's batch_size (examples) and bab's domain_batch (domains per step) side by side
    two = certify(model, x.repeat(2, 1), y.repeat(2), 0.08, method="bab", time_limit=0.3, attack=False,
                  progress=False, batch_size=1, domain_batch=8)
    assert len(two.status) == 2 and set(two.status) <= {"unknown", "falsified"}


def test_bad_options_raise():
    model, x, y, net, ball = _hard_instance()
    for options, match in [({"split": "middle"}, "split"), ({"branching": "random"}, "branching"),
                           ({"domain_batch": 1}, "domain_batch"), ({"max_domains": 0}, "max_domains"),
                           ({"steps": -1}, "steps"), ({"progress": "yes"}, "progress"), ({"refine": 1}, "refine"),
                           ({"time_limit": 0}, "time_limit"), ({"stop_at": float("nan")}, "stop_at"),
                           ({"search_dtype": torch.float16}, "search_dtype"),
                           ({"recompute_intermediate": "yes"}, "recompute_intermediate"),
                           ({"beam": 3}, "unknown option")]:
        with pytest.raises(ValueError, match=match):
            run_method("bab", net, x, ball, **options)
    with pytest.raises(ValueError, match="l_inf ball"):
        run_method("bab", net, x, Ball(0.5, 1), split="input")
    with pytest.raises(ValueError, match="supports l_inf, l_1"):
        margin_bounds(model, x, y, 0.1, norm=2, method="bab")
