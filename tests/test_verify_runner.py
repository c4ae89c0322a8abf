"""The method contract's capability flags, Bounds.cat, the typed Bounds fields, and the one batch runner."""
import numpy as np
import pytest
import torch
from torch import nn

from robustopt.verify import METHODS, get_method
from robustopt.verify.api import Problem, margin_spec
from robustopt.verify.methods import CAPABILITIES, FLAG_OPTIONS, Bounds
from robustopt.verify.runner import bound_job, bound_tasks, method_options, run_batches
from verify_helpers import one_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def _problem(n=6, d=5, k=3, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, 12), nn.ReLU(), nn.Linear(12, k)).eval()
    x = torch.rand(n, d, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = model(x).argmax(1)
    problem = Problem(model, x, 0.05)
    return problem, margin_spec(y, k)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_declares_its_capabilities_consistently(name):
    module = get_method(name)
    for flag in CAPABILITIES:
        assert isinstance(getattr(module, flag), bool), (name, flag)
    for flag, option in FLAG_OPTIONS.items():
        assert getattr(module, flag) == (option in module.OPTIONS), (name, flag)
    if name in ("ibp", "crown", "alpha-crown", "beta-crown", "dual", "lp", "lp-cvxpy", "milp"):
        assert module.EXACT == (name == "milp") and module.SOLVER == (name in ("lp", "lp-cvxpy", "milp"))


def test_a_method_without_flags_is_refused(monkeypatch):
    from robustopt.verify import ibp, methods

    monkeypatch.delattr(ibp, "TAKES_SPLITS")
    with pytest.raises(TypeError, match="TAKES_SPLITS"):
        methods.get_method("ibp")


def test_method_options_passes_a_time_limit_only_where_it_is_taken():
    assert method_options("crown", {"relaxation": "same-slope"}, 5) == {"relaxation": "same-slope"}
    assert method_options("lp", {}, 5) == {"time_limit": 5.0}
    assert method_options("milp", {"time_limit": 1.0}, 5) == {"time_limit": 1.0}  # an explicit option wins
    assert method_options("alpha-crown", {}, None) == {}
    with pytest.raises(ValueError, match="time_limit"):
        method_options("crown", {}, -1)


def test_bounds_cat_concatenates_per_example_fields_and_lists_the_rest():
    def part(n, offset):
        return Bounds(lower=torch.full((n, 2), float(offset)), upper=torch.full((n, 2), offset + 1.0),
                      intermediate=[(torch.zeros(n, 3), torch.ones(n, 3))], points=torch.zeros(n, 2, 4),
                      status=np.array(["optimal"] * n), infeasible=torch.zeros(n, dtype=torch.bool),
                      replayed=torch.full((n, 2), 7.0), margin=np.full(n, 1e-7), seconds=np.full(n, 0.5),
                      info={"per_example": np.arange(n), "count": n, "object": "x"}, alphas=f"a{offset}")

    one = part(2, 0)
    assert Bounds.cat([one]) is one
    both = Bounds.cat([part(2, 0), part(3, 10)])
    assert both.lower.shape == (5, 2) and both.lower[:2].eq(0).all() and both.lower[2:].eq(10).all()
    assert both.upper.shape == (5, 2) and both.points.shape == (5, 2, 4) and both.replayed.shape == (5, 2)
    assert both.status.tolist() == ["optimal"] * 5 and both.infeasible.shape == (5,)
    assert both.margin.shape == (5,) and both.seconds.sum() == 2.5
    assert [tuple(b.shape) for b in both.intermediate[0]] == [(5, 3), (5, 3)]
    assert both.info["per_example"].tolist() == [0, 1, 0, 1, 2]
    assert both.info["count"] == [2, 3] and both.info["object"] == ["x", "x"] and both.alphas == ["a0", "a10"]
    assert Bounds.cat([Bounds(lower=torch.zeros(1, 2)), Bounds(lower=torch.ones(2, 2))]).upper is None
    with pytest.raises(ValueError, match="upper"):
        Bounds.cat([Bounds(lower=torch.zeros(1, 2)), Bounds(lower=torch.ones(2, 2), upper=torch.ones(2, 2))])
    with pytest.raises(ValueError, match="at least one"):
        Bounds.cat([])


@pytest.mark.parametrize("method", ["crown", "milp"])
def test_batches_give_the_bounds_of_one_batch(method):
    problem, C = _problem()
    job = bound_job(problem, C, method, {"return_intermediate": True})
    whole = run_batches(job, problem.batches(100))
    cut = run_batches(job, problem.batches(4))
    assert torch.allclose(whole.lower, cut.lower, atol=1e-9, rtol=0)
    assert len(cut.intermediate) == 1 and cut.intermediate[0][0].shape == (6, 12)
    assert cut.seconds.shape == (6,) and (cut.seconds >= 0).all()
    if method == "milp":  # the typed fields of an exact solver: replayed values, gap, seconds
        assert cut.replayed.shape == (6, 2) and cut.replayed.dtype == torch.float64
        assert (cut.lower <= cut.replayed.nan_to_num(np.inf) + 1e-9).all()
        assert cut.margin.shape == (6,) and (cut.margin >= 0).all()
        assert cut.status.shape == (6,) and "replayed" not in cut.info and "margin" not in cut.info
    else:
        assert cut.replayed is None and cut.margin is None and cut.status is None


def test_row_subsets_and_task_errors():
    problem, C = _problem()
    job = bound_job(problem, C, "crown", {})
    full = run_batches(job, problem.batches(100)).lower
    (_, res), = bound_tasks(job, [([2], [1])])
    assert res.lower.shape == (1, 1) and torch.allclose(res.lower[0, 0], full[2, 1])
    bad = bound_job(problem, C, "crown", {"relaxation": "nonsense"})
    with pytest.raises(ValueError, match="relaxation"):  # serially: the method's own exception
        list(bound_tasks(bad, [[0]]))
    (_, outcome), = bound_tasks(bad, [[0]], errors="yield")
    assert "relaxation" in outcome.message
    with pytest.raises(ValueError, match="unknown option"):
        bound_job(problem, C, "crown", {"steps": 3})
    with pytest.raises(ValueError, match="compute_upper"):
        bound_job(problem, C, "crown", {"compute_upper": True})
