"""The MILP's bounds never rest on the MIP solver's word (issue: a HiGHS dual bound above a margin attained in
the ball gave a false certificate).

- the regression networks of ``shared/data/regressions/`` (skipped where that folder is absent);
- a MIP solver that lies (claims a huge bound) changes nothing that is returned;
- a seeded sweep of small random MLPs and conv nets (l_inf and l_1, with and without the box): every
  ``milp`` bound is at most the margin at a point found by a reference MILP of this file, built independently
  and solved by a second solver (``scipy.optimize.milp``), replayed through the torch model in float64; and
  the bound is the exact minimum (within 1e-4 of the reference point's margin). 24 networks by default,
  2,000 with ``-m slow``.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.optimize import Bounds as VariableBounds, LinearConstraint, milp as scipy_milp
from torch import nn

from robustopt.sets import Ball
from robustopt.verify import certify, margin_bounds, spec_bounds
from robustopt.verify import highs as highs_module
from verify_helpers import randomized, relu_mlp

pytestmark = pytest.mark.usefixtures("one_thread")

REGRESSIONS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "regressions"
CONV = lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(75, 10), nn.ReLU(),
                             nn.Linear(10, 5))
MLP = lambda: nn.Sequential(nn.Linear(7, 9), nn.ReLU(), nn.Linear(9, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(),
                            nn.Linear(12, 4))
CASES = {"milp_presolve_bound.pt": CONV, "milp_false_certificate.pt": CONV, "milp_presolve_mlp.pt": MLP}


def load_case(name):
    path = REGRESSIONS / name
    if not path.exists():
        pytest.skip(f"{path} is absent (shared data, not on users' machines)")
    data = torch.load(path, weights_only=True)
    model = CASES[name]().double()
    model.load_state_dict(data["state_dict"])
    return model.eval(), data


SETTINGS = [None, {"presolve": "off"}, {"mip_feasibility_tolerance": 1e-6, "mip_heuristic_run_rens": True}]


@pytest.mark.parametrize("name, highs_options", [(name, None) for name in sorted(CASES)]
                         + [("milp_presolve_mlp.pt", o) for o in SETTINGS[1:]])
def test_regression_bound_never_above_the_attained_margin(name, highs_options):
    model, data = load_case(name)
    target, at_star = int(data["target_class"]), float(data["margin_at_x_star"])
    x_star = data["x_star"]
    assert Ball(data["eps"], lower=None, upper=None).contains(x_star, data["x"], atol=1e-12).all()
    y = data["y"].reshape(1)
    with torch.no_grad():
        replay = model(x_star)[0]
    assert abs(float(replay[y[0]] - replay[target]) - at_star) < 1e-12
    spec = torch.zeros(1, 1, replay.numel(), dtype=torch.float64)
    spec[0, 0, y[0]], spec[0, 0, target] = 1.0, -1.0
    lower = float(spec_bounds(model, data["x"], spec, data["eps"], method="milp", lower=None, upper=None,
                              highs_options=highs_options)[0, 0])
    assert lower <= at_star
    assert lower >= at_star - 1e-5  # and still the exact minimum (x_star is a minimizer)


def test_regression_false_certificate_is_falsified():
    model, data = load_case("milp_false_certificate.pt")
    result = certify(model, data["x"], data["y"].reshape(1), data["eps"], method="milp", lower=None, upper=None,
                     attack=False, progress=False)
    assert result.status[0] == "falsified"
    assert result.margin_lower[0] <= float(data["margin_at_x_star"])


def test_a_lying_mip_solver_changes_nothing(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3)).double()
    x, y = torch.rand(4, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    honest = margin_bounds(model, x, y, 0.2, method="milp")
    real = highs_module.HighsModel.solve_milp

    def lying(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        out.dual_bound = 1e3  # proven, it says
        return out

    monkeypatch.setattr(highs_module.HighsModel, "solve_milp", lying)
    assert torch.equal(margin_bounds(model, x, y, 0.2, method="milp"), honest)
    verdicts = certify(model, x, y, 0.2, method="milp", attack=False, progress=False)
    monkeypatch.undo()
    assert (verdicts.status == certify(model, x, y, 0.2, method="milp", attack=False, progress=False).status).all()


# ---- the sweep: an independent reference MILP, solved by scipy's milp ----

def small_net(seed):
    """A small random ReLU net (MLP or conv net on (c, 5, 5)), float64, and its input shape."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 5))
    if seed % 2:
        c, ch = int(rng.integers(1, 3)), int(rng.integers(2, 4))
        layers = [nn.Conv2d(c, ch, 3, stride=int(rng.integers(1, 3))), nn.ReLU(), nn.Flatten()]
        flat = nn.Sequential(*layers)(torch.zeros(1, c, 5, 5)).numel()
        w = int(rng.integers(3, 7))
        model, shape = nn.Sequential(*layers, nn.Linear(flat, w), nn.ReLU(), nn.Linear(w, k)), (c, 5, 5)
    else:
        d = int(rng.integers(2, 7))
        model, shape = relu_mlp(d, rng.integers(3, 9, size=int(rng.integers(1, 4))), k), (d,)
    return randomized(model, gen), shape, k


def affine_pieces(model, shape):
    """[(W, b)] float64 numpy of the affine maps between ReLUs (conv and flatten folded by probing the
    layers with the identity)."""
    pieces, block, d = [], [], int(np.prod(shape))
    in_shape = shape
    for layer in list(model) + [nn.ReLU()]:
        if isinstance(layer, nn.ReLU):
            f = nn.Sequential(*block)
            with torch.no_grad():
                eye = torch.eye(d, dtype=torch.float64).reshape(d, *in_shape)
                b = f(torch.zeros(1, *in_shape, dtype=torch.float64)).reshape(-1)
                W = (f(eye).reshape(d, -1) - b).T
            pieces.append((W.numpy(), b.numpy()))
            block, d, in_shape = [], len(b), (len(b),)
        else:
            block.append(layer)
    return pieces


def reference_minimum(pieces, x0, eps, norm, box, row):
    """min over the ball of row . (last affine output), as a MILP with interval big-M: (minimizer x or None,
    whether scipy proved it optimal)."""
    d = len(x0)
    lo, hi = x0 - eps, x0 + eps
    if box:
        lo, hi = np.maximum(lo, 0.0), np.minimum(hi, 1.0)
    cols_lo, cols_hi, integer = [lo], [hi], [np.zeros(d)]
    rows, rlo, rhi = [], [], []
    n_cols = d
    if norm == 1:  # x = x0 + p - q, sum(p + q) <= eps
        cols_lo += [np.zeros(2 * d)]
        cols_hi += [np.full(2 * d, eps)]
        integer += [np.zeros(2 * d)]
        rows.append((np.arange(d), np.arange(d), 1.0))
        rows.append((np.arange(d), d + np.arange(d), -1.0))
        rows.append((np.arange(d), 2 * d + np.arange(d), 1.0))
        rlo += list(x0)
        rhi += list(x0)
        rows.append((np.full(2 * d, d), d + np.arange(2 * d), 1.0))
        rlo += [-np.inf]
        rhi += [eps]
        n_cols = 3 * d
    n_rows = len(rlo)
    prev, l_prev, u_prev = np.arange(d), lo, hi
    for W, b in pieces[:-1]:
        Wp, Wn = np.maximum(W, 0), np.minimum(W, 0)
        l, u = Wp @ l_prev + Wn @ u_prev + b, Wp @ u_prev + Wn @ l_prev + b
        h = len(b)
        a, z_ = n_cols + np.arange(h), n_cols + h + np.arange(h)  # a = relu(z), binary t
        cols_lo += [np.zeros(h), np.zeros(h)]
        cols_hi += [np.maximum(u, 0), np.ones(h)]
        integer += [np.zeros(h), ((l < 0) & (u > 0)).astype(float)]  # stable neurons: t continuous is exact
        n_cols += 2 * h
        for j in range(h):  # a >= z; a <= z - l (1 - t); a <= u t
            rows.append((np.full(len(prev) + 1, n_rows), np.r_[a[j], prev], np.r_[1.0, -W[j]]))
            rlo.append(b[j])
            rhi.append(np.inf)
            rows.append((np.full(len(prev) + 2, n_rows + 1), np.r_[a[j], prev, z_[j]], np.r_[1.0, -W[j], -l[j]]))
            rlo.append(-np.inf)
            rhi.append(b[j] - l[j])
            rows.append((np.full(2, n_rows + 2), np.r_[a[j], z_[j]], np.r_[1.0, -max(u[j], 0.0)]))
            rlo.append(-np.inf)
            rhi.append(0.0)
            n_rows += 3
        prev, l_prev, u_prev = a, np.maximum(l, 0), np.maximum(u, 0)
    W, b = pieces[-1]
    cost = np.zeros(n_cols)
    cost[prev] = row @ W
    r = np.concatenate([np.broadcast_to(t[0], np.shape(t[1])) for t in rows])
    c = np.concatenate([t[1] for t in rows])
    v = np.concatenate([np.broadcast_to(t[2], np.shape(t[1])) for t in rows])
    A = sp.csr_array((v, (r.astype(np.int32), c.astype(np.int32))), shape=(n_rows, n_cols))  # scipy < 1.13: int32
    res = scipy_milp(cost, integrality=np.concatenate(integer),
                     bounds=VariableBounds(np.concatenate(cols_lo), np.concatenate(cols_hi)),
                     constraints=LinearConstraint(A, rlo, rhi), options={"mip_rel_gap": 1e-7, "time_limit": 20.0})
    return (None, False) if res.x is None else (res.x[:d], res.status == 0)


def sweep(seeds):
    checked = 0
    for seed in seeds:
        model, shape, k = small_net(seed)
        rng = np.random.default_rng(10_000 + seed)
        x = torch.as_tensor(rng.uniform(0, 1, size=(1, *shape)))
        y = int(rng.integers(0, k))
        norm = ("inf", 1)[(seed // 2) % 2]
        box = (seed // 4) % 2 == 0
        eps = float(rng.uniform(0.05, 0.3)) * (1 if norm == "inf" else 3)
        ball = Ball(eps, norm, *((0.0, 1.0) if box else (None, None)))
        kw = {} if box else {"lower": None, "upper": None}
        lower = margin_bounds(model, x, torch.tensor([y]), eps, norm=norm, method="milp", **kw)[0]
        pieces = affine_pieces(model, shape)
        x0 = x.reshape(-1).numpy()
        for j in range(k):
            if j == y:
                continue
            spec = np.zeros(k)
            spec[y], spec[j] = 1.0, -1.0
            found, optimal = reference_minimum(pieces, x0, eps, norm, box, spec)
            assert found is not None, f"seed {seed}: the reference MILP found no point"
            point = ball.project(torch.as_tensor(found).reshape(1, *shape), x)
            with torch.no_grad():
                out = model(point)[0]
            attained = float(out[y] - out[j])  # the margin at a point of the ball: an upper bound
            assert float(lower[j]) <= attained + 1e-12 * max(1.0, abs(attained)), (seed, j, float(lower[j]), attained)
            if optimal:  # and the exact minimum, both ways
                assert float(lower[j]) >= attained - 1e-4 * max(1.0, abs(attained)), (seed, j)
            checked += 1
    return checked


def test_milp_never_above_a_reference_point():
    assert sweep(range(24)) > 36


@pytest.mark.slow
def test_milp_never_above_a_reference_point_2000():
    assert sweep(range(100, 2100)) > 3000


def test_solvers_print_nothing_on_stdout():
    """HiGHS's banner would corrupt the CLI's --json output."""
    code = ("import torch; from torch import nn; from robustopt.verify import margin_bounds; torch.manual_seed(0); "
            "net = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2)).double(); "
            "margin_bounds(net, torch.rand(2, 3, dtype=torch.float64), torch.tensor([0, 1]), 0.2, method='milp')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
