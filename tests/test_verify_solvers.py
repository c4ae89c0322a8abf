"""The solver methods (lp, lp-cvxpy, milp): rigorous dual certificates, failure handling, options, degenerate
cases, the readable cvxpy formulation and certify(method="milp"). The cross-method chain is in
test_verify_soundness.py."""
import time

import numpy as np
import pytest
import torch
from torch import nn

from robustopt.linear import worst_case_margins
from robustopt.sets import Ball
from robustopt.verify import certify, logit_bounds, margin_bounds, network, run_method
from robustopt.verify import highs as highs_module
from robustopt.verify.api import margin_spec
from robustopt.verify.lp import SolverBatch
from robustopt.verify.lp_cvxpy import triangle_lp
from robustopt.verify.program import RowCertificates, dual_bound
from verify_helpers import one_thread, sampled_margins  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def small_mlp(seed, d=5, widths=(10, 8), k=4, scale=0.8):
    gen = torch.Generator().manual_seed(seed)
    layers, prev = [], d
    for w in widths:
        layers += [nn.Linear(prev, w), nn.ReLU()]
        prev = w
    model = nn.Sequential(*layers, nn.Linear(prev, k)).double()
    for p in model.parameters():
        p.data = torch.randn(p.shape, generator=gen, dtype=torch.float64) * (scale if p.dim() > 1 else 0.5)
    x = torch.rand(3, d, generator=gen, dtype=torch.float64)
    return model.eval(), x, model(x).argmax(1).detach()


def spec_net(model, x, y):
    return network(model, input_shape=x.shape[1:]).with_spec(margin_spec(y, model[-1].out_features))


@pytest.mark.parametrize("method", ["lp", "milp"])
def test_l2_ball_is_rejected_by_polyhedral_solvers(method):
    model, x, y = small_mlp(0)
    with pytest.raises(ValueError, match="l_inf, l_1"):
        margin_bounds(model, x, y, 0.1, norm=2, method=method)


def test_lp_cvxpy_l2_socp_is_sound_and_dominates_crown():
    model, x, y = small_mlp(1)
    lp = margin_bounds(model, x, y, 0.2, norm=2, method="lp-cvxpy")
    crown = margin_bounds(model, x, y, 0.2, norm=2, method="crown")
    assert (lp >= crown - 1e-7).all()
    assert (lp <= sampled_margins(model, x, y, 0.2, 2) + 1e-9).all()


@pytest.mark.parametrize("method, options, match", [
    ("lp", {"time_limit": -1}, "time_limit"), ("milp", {"time_limit": "1s"}, "time_limit"),
    ("lp", {"stop_at": "zero"}, "stop_at"), ("milp", {"threads": 0}, "threads"),
    ("milp", {"highs_options": ["presolve"]}, "highs_options"), ("lp-cvxpy", {"solver": "NOPE"}, "solver"),
    ("lp", {"relaxation": "adaptive"}, "unknown option"), ("milp", {"steps": 3}, "unknown option"),
])
def test_bad_options_raise(method, options, match):
    model, x, y = small_mlp(2)
    with pytest.raises(ValueError, match=match):
        margin_bounds(model, x, y, 0.1, method=method, **options)


def test_milp_stop_at_only_with_lower_bounds():
    model, x, y = small_mlp(2)
    with pytest.raises(ValueError, match="compute_upper"):
        run_method("milp", spec_net(model, x, y), x, Ball(0.1), compute_upper=True, stop_at=0.0)


@pytest.mark.parametrize("norm", ["inf", 1])
def test_certificate_is_sound_for_any_multipliers(norm):
    """dual_bound gives a lower bound for *any* row multipliers (random, scaled, wrong-signed): never above
    the LP optimum or a point of the ball; with HiGHS's duals it matches HiGHS's objective."""
    model, x, y = small_mlp(3)
    net, ball = spec_net(model, x, y), Ball(0.15 * (1 if norm == "inf" else 3), norm)
    batch = SolverBatch(net, x, ball, None, compute_upper=False)
    program, *_ = batch.example(0)
    model_ = highs_module.HighsModel(program)
    state, duals, objective = model_.solve_lp(0)
    assert state == "optimal"
    rng = np.random.default_rng(0)
    trials = [duals, 1.3 * duals, -duals, duals + rng.normal(0, 0.1, duals.shape), rng.normal(0, 1, duals.shape),
              np.zeros_like(duals), np.full_like(duals, np.nan)]
    cert = RowCertificates(1, len(trials), x.shape[1])
    for t, y_row in enumerate(trials):
        cert.add(0, [t], dual_bound(program, y_row[None], [0]), program)
    bounds = cert.finish(x[:1], Ball(ball.eps, norm))[0]
    assert abs(float(bounds[0]) - objective) < 1e-8
    assert (bounds <= objective + 1e-12).all() and torch.isfinite(bounds).all()
    upper = sampled_margins(model, x[:1], y[:1], ball.eps, norm)
    assert (bounds <= upper[0][upper[0] < np.inf][0] + 1e-12).all()


def test_solver_failure_or_time_out_never_certifies(monkeypatch):
    model, x, y = small_mlp(4)
    net, ball = spec_net(model, x, y), Ball(0.1)
    good = run_method("lp", net, x, ball, compute_upper=False)
    cheap = run_method("crown", net, x, ball, compute_upper=False).lower
    for state in ("error", "time_limit"):
        monkeypatch.setattr(highs_module.HighsModel, "solve_lp", lambda self, row, left=None, s=state:
                            (s, np.full(self.program.A.shape[0], 1e6), 1e6))
        bad = run_method("lp", net, x, ball, compute_upper=False)
        assert (bad.status == state).all()
        assert torch.isinf(bad.info["solver_lower"]).all() and (bad.lower <= good.lower + 1e-9).all()
        assert (bad.lower >= cheap - 1e-9).all()  # the cheap bound stays (it is proven)
    monkeypatch.undo()
    exact = run_method("milp", net, x, ball, compute_upper=False)
    # the MILP solver only searches: a wrong claim (here: infeasible, +inf) changes nothing that is returned
    outcome = highs_module.MilpOutcome("infeasible", np.inf, np.inf, None, 0.0)
    monkeypatch.setattr(highs_module.HighsModel, "solve_milp", lambda self, *a, **k: outcome)
    searched = run_method("milp", net, x, ball, compute_upper=False)
    assert (searched.status == "optimal").all() and (searched.lower < np.inf).all()
    assert torch.allclose(searched.lower, exact.lower, atol=1e-6)
    # the proof's LPs failing: never certified, the bound stays the cheap one or a proven one
    monkeypatch.setattr(highs_module.HighsModel, "solve_lp", lambda self, row, left=None:
                        ("error", np.full(self.program.A.shape[0], 1e6), 1e6))
    bad = run_method("milp", net, x, ball, compute_upper=False)
    assert (bad.status == "error").all() and (bad.lower <= exact.lower + 1e-9).all()


def test_milp_time_limit_is_sound_and_unknown():
    model, x, y = small_mlp(5, d=8, widths=(24, 24, 24), k=3, scale=1.0)
    net, ball = spec_net(model, x, y), Ball(0.3)
    res = run_method("milp", net, x, ball, compute_upper=False, time_limit=1e-3)
    assert (res.status == "time_limit").any()
    assert (res.lower <= torch.as_tensor(res.replayed).nan_to_num(np.inf) + 1e-12).all()
    ver = certify(model, x, y, 0.3, method="milp", time_limit=1e-3, attack=False, progress=False)
    for i, state in enumerate(ver.status):
        if state == "certified":
            assert ver.margin_lower[i] > 0
        if res.status[i] == "time_limit" and state != "falsified":
            assert ver.margin_lower[i] <= 0 or state == "certified"


def test_milp_early_stop_agrees_with_full_solve():
    model, x, y = small_mlp(6, widths=(12, 12))
    y = torch.tensor([y[0], (y[1] + 1) % 4, y[2]])  # one wrong label: falsified at once
    net, ball = spec_net(model, x, y), Ball(0.12)
    full = run_method("milp", net, x, ball, compute_upper=False)
    early = run_method("milp", net, x, ball, compute_upper=False, stop_at=0.0)
    exact = torch.as_tensor(full.replayed).amin(1)
    for i in range(len(x)):
        verdict = early.lower[i].amin() > 0
        assert bool(verdict) == bool(exact[i] > 0)
        if not verdict:
            assert np.nanmin(early.replayed[i]) <= 0
    assert early.info["milp_solves"].sum() < full.info["milp_solves"].sum()


@pytest.mark.parametrize("method", ["lp", "milp", "lp-cvxpy"])
def test_eps_zero_gives_clean_margins(method):
    model, x, y = small_mlp(7)
    got = margin_bounds(model, x, y, 0.0, method=method)
    clean = torch.einsum("nmk,nk->nm", margin_spec(y, 4), model(x)).detach()
    keep = torch.isfinite(got)
    assert torch.allclose(got[keep].view(3, 3), clean, atol=1e-7)


@pytest.mark.parametrize("norm", ["inf", 1])
def test_no_hidden_layer_is_exact_closed_form(norm):
    gen = torch.Generator().manual_seed(8)
    model = nn.Sequential(nn.Linear(6, 4)).double()
    x = torch.rand(5, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (5,), generator=gen)
    W, b = model[0].weight.detach().numpy(), model[0].bias.detach().numpy()
    exact = worst_case_margins(W, b, x.numpy(), y.numpy(), 0.2, norm, lower=0.0, upper=1.0)
    for method in ("lp", "milp"):
        got = margin_bounds(model, x, y, 0.2, norm=norm, method=method).numpy()
        assert np.allclose(got, exact, atol=1e-9)


@pytest.mark.parametrize("shift", [-20.0, 20.0])
def test_all_inactive_or_all_active_relus(shift):
    model, x, y = small_mlp(9, widths=(6,))
    with torch.no_grad():
        model[0].bias += shift
    net, ball = spec_net(model, x, y), Ball(0.05)
    milp = run_method("milp", net, x, ball, compute_upper=False)
    assert (milp.info["binaries"] == 0).all()
    lp = run_method("lp", net, x, ball, compute_upper=False)
    assert torch.allclose(lp.lower, milp.lower, atol=1e-9)
    assert np.allclose(milp.lower.numpy(), milp.replayed, atol=1e-9)


def test_box_tensors_eps_tensor_and_conv_net():
    gen = torch.Generator().manual_seed(10)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3)).double()
    x = torch.rand(3, 1, 6, 6, generator=gen, dtype=torch.float64) * 0.8 + 0.1
    y = model(x).argmax(1).detach()
    eps = torch.tensor([0.05, 0.1, 0.2], dtype=torch.float64)
    lower, upper = torch.full((1, 1, 6, 6), 0.05, dtype=torch.float64), 0.95
    lower[..., :3] = 0.0
    kw = dict(lower=lower, upper=upper)
    lp, cvx, milp = (margin_bounds(model, x, y, eps, method=m, **kw) for m in ("lp", "lp-cvxpy", "milp"))
    crown = margin_bounds(model, x, y, eps, method="crown", **kw)
    keep = torch.isfinite(lp)
    assert torch.allclose(lp[keep], cvx[keep], atol=1e-5)
    assert (lp[keep] >= crown[keep] - 1e-7).all() and (milp[keep] >= lp[keep] - 1e-5).all()
    ball = Ball(eps, "inf", lower, upper)
    pts = torch.stack([ball.random(x, generator=gen) for _ in range(64)])
    margins = torch.stack([torch.einsum("nmk,nk->nm", margin_spec(y, 3), model(p)) for p in pts]).amin(0)
    assert (milp[keep].view(3, 2) <= margins + 1e-9).all()


def test_logit_bounds_from_lp_and_milp_contain_sampled_logits():
    model, x, y = small_mlp(11)
    lb_lp, ub_lp = logit_bounds(model, x, 0.1, method="lp")
    lb, ub = logit_bounds(model, x, 0.1, method="milp")
    assert (lb >= lb_lp - 1e-5).all() and (ub <= ub_lp + 1e-5).all()
    ball = Ball(0.1)
    gen = torch.Generator().manual_seed(0)
    logits = torch.stack([model(ball.random(x, generator=gen)) for _ in range(200)]).detach()
    assert (lb <= logits.amin(0) + 1e-9).all() and (ub >= logits.amax(0) - 1e-9).all()


def test_triangle_lp_is_a_readable_cvxpy_problem():
    import cvxpy as cp

    model, x, y = small_mlp(12, widths=(8,))
    net, ball = spec_net(model, x, y), Ball(0.1)
    batch = SolverBatch(net, x, ball, None, compute_upper=False)
    program, (W, b), x0, eps = batch.example(0)
    bounds = [(ph.lower, ph.upper) for ph in program.phases]
    problem, v = triangle_lp(batch.hidden, bounds, x0, eps, "inf", lower=0.0, upper=1.0)
    assert isinstance(problem, cp.Problem) and set(v) >= {"x", "a", "c", "o", "relu_constraints"}
    v["c"].value, v["o"].value = W.toarray()[0], float(b[0])
    value = problem.solve()
    lp = run_method("lp", net, x, ball, compute_upper=False)
    assert abs(value - float(lp.info["solver_lower"][0, 0])) < 1e-6


def test_certify_with_lp_and_milp():
    model, x, y = small_mlp(13, widths=(12, 12))
    x = torch.cat([x, torch.rand(5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)])
    y = model(x).argmax(1).detach()
    lp = certify(model, x, y, 0.1, method="lp", progress=False)
    milp = certify(model, x, y, 0.1, method="milp", progress=False)
    assert set(milp.status) <= {"certified", "falsified"}  # the MILP always reaches a verdict here
    assert ((lp.status == "certified") <= (milp.status == "certified")).all()
    assert ((lp.status == "falsified") == (milp.status == "falsified")).all()  # falsified by PGD first
    for i, point in milp.counterexample.items():
        assert Ball(0.1).contains(point.unsqueeze(0), x[i:i + 1]).all()
        assert (torch.einsum("mk,k->m", margin_spec(y[i:i + 1], 4)[0], model(point.unsqueeze(0))[0]) <= 0).any()


def test_highs_interrupt_does_not_leak_into_the_next_solve():
    """Regression: HiGHS keeps the callback's interrupt flag between runs; a row settled early must not cut
    the next row's solve short."""
    model, x, y = small_mlp(14, widths=(12, 12))
    batch = SolverBatch(spec_net(model, x, y), x, Ball(0.15), None, compute_upper=False)
    program, *_ = batch.example(0, integer=True)
    assert program.integrality.sum() > 0
    solver = highs_module.HighsModel(program, integer=True)
    first = solver.solve_milp(0, settle_above=-1e9)  # interrupted at its first finite bound
    assert first.status == "settled"
    second = solver.solve_milp(1)
    assert second.status == "optimal" and second.solution is not None


def test_an_lp_time_limit_counts_only_its_own_run():
    """Regression: HiGHS checks the LP solver's time limit against the model's run time summed over all runs, so
    a model that has already run longer than an LP's limit stopped every later LP at once ("time_limit"; the
    MILP's proof search then gave up early, at 174 of 300 s on mnistfc 256x4 prop_0)."""
    model, x, y = small_mlp(14, widths=(12, 12))
    program, *_ = SolverBatch(spec_net(model, x, y), x, Ball(0.15), None, compute_upper=False).example(0)
    solver = highs_module.HighsModel(program)
    rows = program.objective.shape[0]
    for i in range(5000):  # run time on the clock: well above the limit asked below
        solver.highs.clearSolver()  # a cold solve each time
        assert solver.solve_lp(i % rows)[0] == "optimal"
        if solver.highs.getRunTime() > 0.3:
            break
    assert solver.highs.getRunTime() > 0.3
    solver.highs.clearSolver()
    tic = time.perf_counter()
    state, _, objective = solver.solve_lp(0, time_limit=0.2)
    assert state == "optimal" and np.isfinite(objective)
    assert time.perf_counter() - tic < 0.5
