"""robustopt.sets.Ball: exact projection and support function against generic solvers."""
import cvxpy as cp
import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from robustopt.sets import Ball

NORMS = ["inf", 2, 1]


def _instance(rng, n=4, d=7, boxed=True):
    x = rng.uniform(0, 1, size=(n, d))
    if boxed:
        return x, 0.0, 1.0
    return x, None, None


def _cvx_set(delta, x, eps, norm, lower, upper):
    p = {"inf": "inf", 2: 2, 1: 1}[norm]
    cons = [cp.norm(delta, p) <= eps]
    if lower is not None:
        cons += [x + delta >= lower, x + delta <= upper]
    return cons


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("boxed", [True, False])
def test_projection_matches_cvxpy(norm, boxed):
    rng = np.random.default_rng(0)
    x, lower, upper = _instance(rng, boxed=boxed)
    eps = 0.3
    z = x + rng.normal(scale=0.6, size=x.shape)
    ball = Ball(eps, norm, lower, upper)
    proj = ball.project(z, x)
    assert isinstance(proj, np.ndarray)
    for i in range(len(x)):
        delta = cp.Variable(x.shape[1])
        prob = cp.Problem(cp.Minimize(cp.sum_squares(x[i] + delta - z[i])), _cvx_set(delta, x[i], eps, norm, lower, upper))
        prob.solve(solver=cp.CLARABEL)
        # ours is feasible (below) and no farther from z than the interior-point solution
        assert np.sum((proj[i] - z[i]) ** 2) <= prob.value + 1e-9
        np.testing.assert_allclose(proj[i], x[i] + delta.value, atol=1e-4)
    assert ball.contains(proj, x, atol=1e-9).all()


@pytest.mark.parametrize("norm", NORMS)
def test_projection_is_identity_inside_and_idempotent(norm):
    rng = np.random.default_rng(1)
    x = torch.as_tensor(rng.uniform(0, 1, size=(16, 10)))
    ball = Ball(0.25, norm)
    inside = ball.random(x, generator=torch.Generator().manual_seed(0))
    assert ball.contains(inside, x).all()
    torch.testing.assert_close(ball.project(inside, x), inside, rtol=0, atol=1e-12)
    far = x + torch.as_tensor(rng.normal(size=x.shape))
    once = ball.project(far, x)
    torch.testing.assert_close(ball.project(once, x), once, rtol=0, atol=1e-12)


def _support_reference(c, x, eps, norm, lower, upper):
    d = len(x)
    if norm == 2:
        delta = cp.Variable(d)
        prob = cp.Problem(cp.Maximize(c @ (x + delta)), _cvx_set(delta, x, eps, norm, lower, upper))
        prob.solve(solver=cp.CLARABEL)
        return prob.value
    lo = np.full(d, -np.inf) if lower is None else lower - x
    hi = np.full(d, np.inf) if upper is None else upper - x
    if norm == "inf":
        bounds = list(zip(np.maximum(lo, -eps), np.minimum(hi, eps)))
        res = linprog(-c, bounds=bounds, method="highs")
        return -res.fun + c @ x
    # l1: delta = p - q, p, q >= 0, sum(p + q) <= eps, lo <= p - q <= hi
    A_ub = np.vstack([np.ones(2 * d), np.hstack([np.eye(d), -np.eye(d)]), np.hstack([-np.eye(d), np.eye(d)])])
    b_ub = np.concatenate([[eps], hi, -lo])
    keep = np.isfinite(b_ub)
    res = linprog(-np.concatenate([c, -c]), A_ub=A_ub[keep], b_ub=b_ub[keep], bounds=(0, None), method="highs")
    return -res.fun + c @ x


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("boxed", [True, False])
def test_support_matches_solvers(norm, boxed):
    rng = np.random.default_rng(2)
    x, lower, upper = _instance(rng, n=5, d=9, boxed=boxed)
    c = rng.normal(size=(5, 3, 9))
    c[0, 0, :4] = 0.0  # zero coefficients
    ball = Ball(0.4, norm, lower, upper)
    values = ball.support(c, x)
    points = ball.support_point(c, x)
    assert values.shape == (5, 3) and points.shape == (5, 3, 9)
    for i in range(5):
        for j in range(3):
            ref = _support_reference(c[i, j], x[i], 0.4, norm, lower, upper)
            assert values[i, j] == pytest.approx(ref, abs=1e-6)
            assert c[i, j] @ points[i, j] == pytest.approx(values[i, j], abs=1e-10)
            assert ball.contains(points[i, j][None], x[i][None], atol=1e-9).all()


def test_support_per_example_eps_and_single_objective():
    x = torch.zeros(3, 4, dtype=torch.float64) + 0.5
    c = torch.ones(3, 4, dtype=torch.float64)
    ball = Ball(torch.tensor([0.0, 0.1, 0.2]), "inf", lower=None, upper=None)
    torch.testing.assert_close(ball.support(c, x), torch.tensor([2.0, 2.4, 2.8], dtype=torch.float64))


def test_support_on_images_keeps_shape():
    x = torch.rand(2, 1, 3, 3, dtype=torch.float64)
    c = torch.randn(2, 5, 1, 3, 3, dtype=torch.float64)
    ball = Ball(0.1, 2)
    assert ball.support(c, x).shape == (2, 5)
    assert ball.support_point(c, x).shape == c.shape


@pytest.mark.parametrize("norm", NORMS)
def test_random_points_lie_in_the_set(norm):
    x = torch.rand(64, 20, dtype=torch.float32)
    ball = Ball(0.3, norm)
    pts = ball.random(x, generator=torch.Generator().manual_seed(3))
    assert pts.dtype == torch.float32 and pts.shape == x.shape
    assert ball.contains(pts, x, atol=1e-6).all()
    assert not torch.equal(pts, x)


def test_steepest_ascent_directions():
    g = torch.tensor([[3.0, -4.0, 0.0, 1.0]])
    torch.testing.assert_close(Ball(1, "inf").steepest_ascent(g), torch.tensor([[1.0, -1.0, 0.0, 1.0]]))
    torch.testing.assert_close(Ball(1, 2).steepest_ascent(g), g / np.sqrt(26))
    torch.testing.assert_close(Ball(1, 1).steepest_ascent(g), torch.tensor([[0.0, -1.0, 0.0, 0.0]]))
    torch.testing.assert_close(Ball(1, 1).steepest_ascent(g, k=2), torch.tensor([[0.5, -0.5, 0.0, 0.0]]))
    assert (Ball(1, 2).steepest_ascent(torch.zeros(1, 4)) == 0).all()


def test_dual_norm_and_box():
    w = np.array([[1.0, -2.0, 2.0]])
    assert Ball(1, "inf").dual_norm(w)[0] == pytest.approx(5.0)
    assert Ball(1, 2).dual_norm(w)[0] == pytest.approx(3.0)
    assert Ball(1, 1).dual_norm(w)[0] == pytest.approx(2.0)
    x = torch.tensor([[0.05, 0.5, 0.97]])
    lo, hi = Ball(0.1, 2).box(x)
    torch.testing.assert_close(lo, torch.tensor([[0.0, 0.4, 0.87]]))
    torch.testing.assert_close(hi, torch.tensor([[0.15, 0.6, 1.0]]))


def test_eps_zero_collapses_to_the_centre():
    x = torch.rand(5, 6, dtype=torch.float64)
    for norm in NORMS:
        ball = Ball(0.0, norm)
        torch.testing.assert_close(ball.project(x + 1.0, x), x)
        c = torch.randn(5, 6, dtype=torch.float64)
        torch.testing.assert_close(ball.support(c, x), (c * x).sum(1))


@pytest.mark.parametrize("bad, match", [
    (dict(eps=-0.1), "eps"), (dict(eps=float("nan")), "eps"), (dict(norm=3), "norm"),
    (dict(norm="l7"), "norm"), (dict(lower=1.0, upper=0.0), "lower"),
])
def test_bad_arguments(bad, match):
    kwargs = dict(eps=0.1, norm="inf")
    kwargs.update(bad)
    with pytest.raises(ValueError, match=match):
        Ball(**kwargs)


def test_centre_outside_box_and_wrong_shapes():
    ball = Ball(0.1)
    with pytest.raises(ValueError, match="outside the box"):
        ball.check_center(torch.tensor([[1.5, 0.2]]))
    with pytest.raises(ValueError, match="shape"):
        ball.support(torch.ones(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="radii"):
        Ball(torch.tensor([0.1, 0.2])).project(torch.zeros(3, 2), torch.zeros(3, 2))


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("eps", [1e-3, 0.5, 3.0])
def test_float32_projection_stays_inside(norm, eps):
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(64, 784, generator=gen)
    ball = Ball(eps, norm)
    p = ball.project(x + torch.randn(x.shape, generator=gen), x)
    assert p.dtype == torch.float32
    assert ball.contains(p, x, atol=1e-6).all()


def test_flat_aligns_eps_and_box_with_the_flat_batch():
    x = torch.rand(3, 2, 4, dtype=torch.float64)
    per_coord = torch.zeros(2, 4)  # one example's shape: shared by all
    per_example = torch.full((3, 1, 1), -1.0)  # broadcast to the batch
    ball = Ball(torch.tensor([0.1, 0.2, 0.3]), 2, per_coord, per_example + 3).flat(x)
    assert ball.norm == 2 and ball.eps.dtype == torch.float64 and ball.eps.shape == (3,)
    assert ball.lower.shape == (3, 8) and ball.upper.shape == (3, 8) and ball.lower.dtype == torch.float64
    assert (ball.lower == 0).all() and (ball.upper == 2).all()
    scalars = Ball(0.1, "inf", np.float64(0.0), None).flat(x)
    assert scalars.eps == 0.1 and scalars.lower == 0.0 and isinstance(scalars.lower, float) and scalars.upper is None
    # a flat ball describes the same set: box and projection agree with the original on x (n, *s)
    original = Ball(0.2, "inf", per_coord, 0.9)
    for a, b in zip(original.box(x), original.flat(x).box(x)):
        assert torch.equal(a, b)
    far = x + 5
    assert torch.equal(original.project(far, x), original.flat(x).project(far, x))


@pytest.mark.parametrize("field, value", [("eps", torch.ones(2)), ("lower", torch.zeros(5)),
                                          ("upper", torch.ones(3, 7))])
def test_flat_names_the_argument_that_does_not_fit(field, value):
    args = {"eps": 0.1, "lower": 0.0, "upper": 1.0, field: value}
    with pytest.raises(ValueError, match=field):
        Ball(args["eps"], "inf", args["lower"], args["upper"]).flat(torch.rand(3, 2, 4))


def test_select_picks_rows_of_per_example_fields_only():
    x = torch.rand(4, 3, dtype=torch.float64)
    eps = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    ball = Ball(eps, 1, -torch.arange(4.0)[:, None], 1.0).flat(x)
    some = ball.select(torch.tensor([3, 1]))
    assert torch.equal(some.eps, torch.tensor([0.4, 0.2], dtype=torch.float64))
    assert torch.equal(some.lower, torch.tensor([[-3.0] * 3, [-1.0] * 3], dtype=torch.float64))
    assert some.upper == 1.0 and some.norm == 1
    one = ball.select(slice(2, 3))
    assert one.eps.shape == (1,) and one.lower.shape == (1, 3)
    mask = ball.select(torch.tensor([True, False, False, True]))
    assert torch.equal(mask.eps, ball.eps[[0, 3]])
    shared = Ball(0.5, "inf", None, 2.0).select([0, 2])
    assert shared.eps == 0.5 and shared.lower is None and shared.upper == 2.0
    # the selected ball is the ball of those examples
    assert torch.equal(some.box(x[[3, 1]])[0], ball.box(x)[0][[3, 1]])
