"""The public verify API: shapes, batching, boxes, certify verdicts, certified radii and bad input."""
import numpy as np
import pytest
import torch
from torch import nn

from robustopt.sets import Ball
from robustopt.verify import (CertifyResult, certified_radius, certify, logit_bounds, margin_bounds, network,
                              spec_bounds)
from verify_helpers import one_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed=0, d=6, k=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, k)).eval()


def _data(model, n=40, d=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=gen)
    with torch.no_grad():
        y = model(x).argmax(1)
    return x, y


def test_shapes_dtype_and_batching():
    model = _model()
    x, y = _data(model)
    b = margin_bounds(model, x, y, 0.05)
    assert b.shape == (40, 4) and b.dtype == torch.float64
    assert torch.isinf(b[torch.arange(40), y]).all()
    small = margin_bounds(model, x, y, 0.05, batch_size=7)
    torch.testing.assert_close(b, small)
    lb, ub = logit_bounds(model, x, 0.05)
    assert lb.shape == ub.shape == (40, 4) and (lb <= ub).all()
    C = torch.randn(3, 4)
    s = spec_bounds(model, x, C, 0.05)
    assert s.shape == (40, 3)
    s3 = spec_bounds(model, x, C.expand(40, 3, 4), 0.05, method="dual")
    torch.testing.assert_close(s3, spec_bounds(model, x, C, 0.05, method="dual"))
    f32 = margin_bounds(model, x, y, 0.05, dtype=torch.float32)
    assert f32.dtype == torch.float32
    np.testing.assert_allclose(f32[torch.isfinite(f32)], b[torch.isfinite(b)].float(), atol=1e-4)


def test_numpy_inputs_network_input_and_per_example_eps():
    model = _model()
    x, y = _data(model, n=6)
    eps = torch.tensor([0.0, 0.01, 0.02, 0.05, 0.1, 0.2])
    together = margin_bounds(model, x.numpy(), y.numpy(), eps)
    for i in range(6):
        alone = margin_bounds(network(model), x[i:i + 1], y[i:i + 1], float(eps[i]))
        torch.testing.assert_close(together[i:i + 1], alone)


def test_per_coordinate_box():
    model = _model()
    x, y = _data(model, n=5)
    lower, upper = torch.zeros(6), torch.ones(6)
    lower[:3] = x[:, :3].min(0).values  # coordinates 0-2 may not go below their smallest value
    tight = margin_bounds(model, x, y, 0.1, lower=lower, upper=upper)
    loose = margin_bounds(model, x, y, 0.1)
    assert (tight >= loose - 1e-12).all()
    free = margin_bounds(model, x, y, 0.1, lower=None, upper=None)
    assert (loose >= free - 1e-12).all()


def test_certify_verdicts_are_consistent():
    pytest.importorskip("robustopt.attacks")
    model = _model(1)
    x, y = _data(model, n=60, seed=1)
    y[:4] = (y[:4] + 1) % 4  # four misclassified examples: falsified by their own clean point
    for method in ("ibp", "crown", "alpha-crown", "dual"):
        res = certify(model, x, y, 0.03, method=method, progress=False, batch_size=16)
        assert isinstance(res, CertifyResult) and res.status.shape == (60,)
        assert set(res.status) <= {"certified", "falsified", "unknown"}
        assert (res.status[:4] == "falsified").all()
        certified = res.status == "certified"
        assert (res.margin_lower.numpy()[certified] > 0).all()
        assert res.certified_accuracy == pytest.approx(certified.mean())
        for i, point in res.counterexample.items():
            assert res.status[i] == "falsified"
            assert Ball(0.03).contains(point.unsqueeze(0).float(), x[i:i + 1])
            logits = model(point.float().unsqueeze(0))[0]
            others = torch.cat([logits[:y[i]], logits[y[i] + 1:]])
            assert logits[y[i]] <= others.max() + 1e-5
        assert set(res.counterexample) == set(np.flatnonzero(res.status == "falsified"))
    crown = certify(model, x, y, 0.03, method="crown", progress=False)
    ibp = certify(model, x, y, 0.03, method="ibp", progress=False, attack=False)
    assert crown.counts["certified"] >= 1 and crown.counts["falsified"] >= 4
    assert not ((ibp.status == "certified") & (crown.status == "falsified")).any()


@pytest.mark.parametrize("status", ["time_limit", "error"])
def test_certify_never_certifies_a_timed_out_or_failed_solve(monkeypatch, status):
    """DESIGN.md: a solver time-out or failure is "unknown", even when the bound it returned is > 0."""
    from robustopt.verify.api import Problem
    from robustopt.verify.methods import Bounds

    def solved(problem, spec, method, run, options, compute_upper=False, rows=None):  # example 0 fails, bound > 0
        return Bounds(lower=torch.ones(len(run), spec.shape[-2], dtype=torch.float64),
                      status=np.array([status if int(i) == 0 else "optimal" for i in run]))

    monkeypatch.setattr(Problem, "bounds", solved)
    model = _model()
    x, y = _data(model, n=6)
    res = certify(model, x, y, 0.0, method="lp", attack=False, progress=False)
    assert res.status[0] == "unknown" and (res.status[1:] == "certified").all()


def test_certify_time_limit_and_unknown_options(monkeypatch):
    """A time limit goes to the methods that take one and is ignored by the others (as in compare)."""
    from robustopt.verify import alpha_crown

    model = _model()
    x, y = _data(model, n=8)
    given = []
    original = alpha_crown.bounds
    monkeypatch.setattr(alpha_crown, "bounds",
                        lambda *a, **kw: given.append(kw.get("time_limit")) or original(*a, **kw))
    res = certify(model, x, y, 0.02, method="alpha-crown", time_limit=1.0, attack=False, progress=False)
    assert len(res.status) == 8 and given and set(given) == {1.0}
    limited = certify(model, x, y, 0.02, method="crown", time_limit=1e-9, attack=False, progress=False)
    plain = certify(model, x, y, 0.02, method="crown", attack=False, progress=False)
    assert torch.equal(limited.margin_bounds, plain.margin_bounds) and (limited.status == plain.status).all()
    with pytest.raises(ValueError, match="time_limit"):
        certify(model, x, y, 0.02, method="crown", time_limit=-1.0, progress=False)
    with pytest.raises(ValueError, match="unknown option"):
        certify(model, x, y, 0.02, method="crown", relaxtion="same-slope", progress=False)


def test_certified_radius_is_certified_and_tight():
    model = _model(2)
    x, y = _data(model, n=8, seed=2)
    y[0] = (y[0] + 1) % 4
    for norm in ("inf", 2):
        r = certified_radius(model, x, y, norm=norm, method="crown", tol=1e-4)
        assert r.shape == (8,) and r[0] == 0 and (r[1:] > 0).all()
        ok = margin_bounds(model, x[1:], y[1:], r[1:], norm).amin(1) > 0
        assert ok.all()
        beyond = margin_bounds(model, x[1:], y[1:], r[1:] + 2e-4, norm).amin(1) > 0
        assert not beyond.all()
    alpha = certified_radius(model, x, y, method="alpha-crown", tol=1e-3, steps=10)
    assert (alpha[1:] > 0).all()


@pytest.mark.parametrize("method", ["ibp", "crown", "alpha-crown", "dual"])
def test_bad_input_raises(method):
    model = _model()
    x, y = _data(model, n=4)
    with pytest.raises(ValueError, match="shape"):
        margin_bounds(model, x[:, :5], y, 0.1, method=method)
    with pytest.raises(ValueError, match="eps"):
        margin_bounds(model, x, y, -0.1, method=method)
    with pytest.raises(ValueError, match="eps"):
        margin_bounds(model, x, y, torch.ones(3), method=method)
    with pytest.raises(ValueError, match="labels out of range"):
        margin_bounds(model, x, y + 4, 0.1, method=method)
    with pytest.raises(ValueError, match="NaN"):
        margin_bounds(model, x * float("nan"), y, 0.1, method=method)
    with pytest.raises(ValueError, match="outside the box"):
        margin_bounds(model, x + 1.5, y, 0.1, method=method)
    with pytest.raises(ValueError, match="norm"):
        margin_bounds(model, x, y, 0.1, norm=3, method=method)
    with pytest.raises(ValueError, match="unknown option"):
        margin_bounds(model, x, y, 0.1, method=method, not_an_option=1)
    with pytest.raises(ValueError, match="intermediate"):
        margin_bounds(model, x, y, 0.1, method=method, intermediate=[(torch.zeros(4, 24), torch.zeros(4, 24))])
    with pytest.raises(ValueError, match="compute_upper"):
        margin_bounds(model, x, y, 0.1, method=method, compute_upper=True)


def test_unknown_method_and_unsupported_layer_raise():
    model = _model()
    x, y = _data(model, n=4)
    with pytest.raises(ValueError, match="method must be one of"):
        margin_bounds(model, x, y, 0.1, method="deeppoly")
    with pytest.raises(ValueError, match="relaxation must be one of"):
        margin_bounds(model, x, y, 0.1, method="crown", relaxation="tight")
    with pytest.raises(ValueError, match="supports Linear"):
        margin_bounds(nn.Sequential(nn.Linear(6, 4), nn.Sigmoid()), x, y, 0.1)
    with pytest.raises(ValueError, match="steps"):
        margin_bounds(model, x, y, 0.1, method="alpha-crown", steps=-1)
