"""robustopt.train: every method lowers its own objective, robust training buys robustness, bad input raises."""
import math

import numpy as np
import pytest
import torch

from robustopt import attacks, models
from robustopt.data import load_digits
from robustopt.sets import Ball
from robustopt.train import METHODS, evaluate, robust_loss, train
from robustopt.train.losses import (Context, _one_step, crown_ibp_margins, ibp_margins, onestep, trades_point,
                                     worst_case_logits)
from robustopt.train.schedules import lr_factor, ramp
from robustopt.verify import margin_bounds, network

pytestmark = pytest.mark.usefixtures("one_thread")
EPS = 0.1


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(split="train")
    Xt, yt = load_digits(split="test")
    return X, y, Xt, yt


def fresh_mlp(seed=0, hidden=(64, 64)):
    torch.manual_seed(seed)
    return models.mlp(64, hidden, 10)


def fit(method, X, y, epochs=10, seed=0, **kwargs):
    model = fresh_mlp(seed)
    history = train(model, X, y, method=method, eps=EPS, epochs=epochs, lr=3e-3, progress=False, device="cpu",
                    seed=seed, **kwargs)
    return model, history


@pytest.fixture(scope="module")
def standard_and_pgd(digits):
    X, y, Xt, yt = digits
    return {m: fit(m, X, y, epochs=20)[0] for m in ("standard", "pgd")}


# ---------------------------------------------------------------------------------------------- objectives
@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_decreases_its_own_objective(digits, method):
    X, y, _, _ = digits
    X, y = X[:512], y[:512]
    options = {"crown_weight": 1.0} if method == "crown_ibp" else {}  # else the end value, 0, is plain IBP
    model = fresh_mlp()
    before = robust_loss(model, X, y, method, eps=EPS, **options)
    history = train(model, X, y, method=method, eps=EPS, epochs=8, lr=3e-3, batch_size=32, progress=False,
                    device="cpu", **options)  # certified methods ramp eps up over the first 4 epochs
    after = robust_loss(model, X, y, method, eps=EPS, **options)
    assert after < 0.8 * before, (method, before, after)
    assert history["loss"][-1] < history["loss"][0]
    assert len(history["loss"]) == 8 and all(math.isfinite(v) for v in history["loss"])


def test_pgd_training_beats_standard_training_under_pgd(digits, standard_and_pgd):
    _, _, Xt, yt = digits
    scores = {m: evaluate(model, Xt, yt, EPS, pgd_steps=20, certify_methods=None)
              for m, model in standard_and_pgd.items()}
    assert scores["standard"]["clean_accuracy"] > 0.9 and scores["pgd"]["clean_accuracy"] > 0.85
    assert scores["pgd"]["pgd_accuracy"] > scores["standard"]["pgd_accuracy"] + 0.2, scores


def test_evaluate_reports_the_status_of_a_complete_method(digits, standard_and_pgd):
    """A complete method's per-example status says "falsified" too (what the example's bracket needs); its
    certified mask is status == "certified", and nothing an attack broke is certified."""
    _, _, Xt, yt = digits
    out = evaluate(standard_and_pgd["standard"], Xt[:12], yt[:12], EPS, pgd_steps=20,
                   certify_methods=("crown", ("bab", 6)), time_limit=5.0)
    assert out["status"]["crown"].shape == (12,) and out["status"]["bab"].shape == (6,)
    for method, status in out["status"].items():
        assert set(status) <= {"certified", "falsified", "unknown", "timeout"}, (method, set(status))
        assert (out["certified"][method] == (status == "certified")).all()
        assert not (out["certified"][method] & ~out["pgd_robust"][:len(status)]).any()
    assert (out["status"]["bab"] == "falsified").sum() >= 1, out["status"]["bab"]  # standard training: not robust


def test_ibp_training_certifies_where_standard_training_does_not(digits, standard_and_pgd):
    X, y, Xt, yt = digits
    model, history = fit("ibp", X, y, epochs=20)
    assert history["eps_ramp"] == (0.0, 10.0)  # the ramp ends halfway through training
    certified = evaluate(model, Xt, yt, EPS, pgd_steps=0, certify_methods=("ibp",))["certified_accuracy"]["ibp"]
    baseline = evaluate(standard_and_pgd["standard"], Xt, yt, EPS, pgd_steps=0,
                        certify_methods=("ibp",))["certified_accuracy"]["ibp"]
    assert baseline <= 0.02
    assert certified > 0.3, certified


def test_onestep_linf_is_fgsm(digits):
    X, y, _, _ = digits
    a, _ = fit("fgsm", X[:256], y[:256], epochs=2)
    b, _ = fit("onestep", X[:256], y[:256], epochs=2)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


# ---------------------------------------------------------------------------------------------- inner problems
@pytest.mark.parametrize("norm", ["inf", 2, 1])
def test_training_fgsm_step_is_the_attack_step(norm):
    """fgsm / fgsm_rs take the attack's step without its checks: same point as attacks.fgsm, inside ball ∩ box."""
    torch.manual_seed(2)
    model = fresh_mlp().double()
    x, y = torch.rand(8, 64, dtype=torch.float64), torch.randint(0, 10, (8,))
    eps = {"inf": 0.1, 2: 0.5, 1: 2.0}[norm]
    ctx = Context(eps, norm, 0.0, 1.0)
    ours = _one_step(model, x, y, ctx, x, eps)
    torch.testing.assert_close(ours, attacks.fgsm(model, x, y, eps, norm).x_adv)
    start = ctx.ball.random(x, generator=torch.Generator().manual_seed(0))
    assert ctx.ball.contains(_one_step(model, x, y, ctx, start, 1.25 * eps), x).all()


def test_onestep_takes_the_steepest_ascent_step_of_each_norm():
    torch.manual_seed(1)
    model = fresh_mlp()
    x, y = torch.rand(6, 64) * 0.5 + 0.25, torch.randint(0, 10, (6,))
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x_in):
            seen.append(x_in.detach())
            return model(x_in)

    for norm in ("inf", 2, 1):
        onestep(Spy(), x, y, Context(0.2, norm, None, None))
        delta = (seen[-1] - x).flatten(1)  # the last forward pass: the descent step's point
        norms = torch.linalg.vector_norm(delta, ord={"inf": math.inf, 2: 2, 1: 1}[norm], dim=1)
        torch.testing.assert_close(norms, torch.full((6,), 0.2))
        if norm == "inf":
            assert bool(((delta.abs() - 0.2).abs() < 1e-6).all())
        if norm == 1:
            assert bool(((delta != 0).sum(1) == 1).all())  # Shaham et al.: a single coordinate


@pytest.mark.parametrize("norm", ["inf", 2, 1])
def test_trades_point_lies_in_ball_and_box(norm):
    torch.manual_seed(2)
    model = fresh_mlp()
    x = torch.rand(8, 64)
    ctx = Context(0.3, norm, 0.0, 1.0, options={"steps": 5, "step_size": None, "beta": 6.0}, seed=3)
    x_adv = trades_point(model, x, ctx)
    assert bool(Ball(0.3, norm).contains(x_adv, x).all())
    assert float((x_adv - x).abs().max()) > 0.01  # it moved


@pytest.mark.parametrize("norm", ["inf", 2])
def test_differentiable_bounds_equal_verify_bounds(norm):
    torch.manual_seed(3)
    model = fresh_mlp(hidden=(20, 20)).double()
    x, y = torch.rand(5, 64, dtype=torch.float64), torch.randint(0, 10, (5,))
    ctx = Context(0.05, norm, 0.0, 1.0, options={"crown_weight": (1.0, 1.0)})
    others = torch.ones(5, 10, dtype=torch.bool).scatter_(1, y.view(5, 1), False)

    def spread(rows):  # (n, k - 1) bounds -> (n, k) with +inf at y, as margin_bounds gives them
        logits = worst_case_logits(rows, y)
        assert bool((logits[~others] == 0).all())
        return (-logits).masked_fill(~others, math.inf)

    torch.testing.assert_close(spread(ibp_margins(model, x, y, ctx)), margin_bounds(model, x, y, 0.05, norm, method="ibp"))
    _, inter = margin_bounds(model, x, y, 0.05, norm, method="ibp", return_intermediate=True)
    crown_ibp = crown_ibp_margins(model, x, y, ctx)
    reference = margin_bounds(model, x, y, 0.05, norm, method="crown", intermediate=inter)
    torch.testing.assert_close(spread(crown_ibp), reference)
    crown_ibp.sum().backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.parameters())
    assert not network(model).affine[0].weight.requires_grad  # the default canonical form stays detached


def test_certified_training_runs_on_a_cnn():
    X, y = load_digits(split="train", flatten=False)
    torch.manual_seed(0)
    model = models.cnn_small(1, 8, 10)
    history = train(model, X[:256], y[:256], method="crown_ibp", eps=EPS, epochs=2, progress=False, device="cpu")
    assert history["eps_schedule"][-1] == pytest.approx(EPS)
    assert all(math.isfinite(v) for v in history["loss"])


@pytest.mark.parametrize("norm", [2, 1])
@pytest.mark.parametrize("method", ["fgsm", "fgsm_rs", "pgd", "trades", "onestep", "ibp"])
def test_other_norms_run(digits, method, norm):
    X, y, _, _ = digits
    model = fresh_mlp(hidden=(16,))
    history = train(model, X[:128], y[:128], method=method, eps=0.5, norm=norm, epochs=1, progress=False,
                    device="cpu", steps=2) if method in ("pgd", "trades") else \
        train(model, X[:128], y[:128], method=method, eps=0.5, norm=norm, epochs=1, progress=False, device="cpu")
    assert math.isfinite(history["loss"][0]) and history["norm"] == norm


# ---------------------------------------------------------------------------------------------- loop features
def test_schedules_history_eval_and_checkpoints(digits, tmp_path):
    X, y, Xt, yt = digits
    model = fresh_mlp(hidden=(16,))
    history = train(model, X[:200], y[:200], method="ibp", eps=EPS, epochs=4, batch_size=50, lr_schedule="cosine",
                    eval_data=(Xt[:50], yt[:50]), eval_every=2, eval_pgd_steps=5, eval_certify=["ibp", "crown"],
                    checkpoint=str(tmp_path / "ckpt_{epoch}.pt"), progress=False, device=None)
    assert history["device"] in ("cpu", "cuda:0", "cuda")
    np.testing.assert_allclose(history["eps_schedule"], [0.75 * EPS / 2, 1.75 * EPS / 2, EPS, EPS])  # last batches
    assert history["lr_schedule"][-1] < history["lr_schedule"][0]
    assert history["eval_epoch"] == [2, 4]
    assert set(history["eval_certified_accuracy"]) == {"ibp", "crown"}
    for clean, attacked, cert in zip(history["eval_accuracy"], history["eval_pgd_accuracy"],
                                     history["eval_certified_accuracy"]["ibp"]):
        assert cert <= attacked <= clean
    assert len(history["checkpoints"]) == 4
    loaded = models.load(history["checkpoints"][-1])
    torch.testing.assert_close(loaded(torch.as_tensor(Xt[:5])), model(torch.as_tensor(Xt[:5])))


def test_schedule_functions():
    assert ramp(0.5, 1, 3, 0.0, 1.0) == 0.0 and ramp(2, 1, 3, 0.0, 1.0) == 0.5 and ramp(9, 1, 3, 1.0, 0.5) == 0.5
    assert lr_factor("constant", 3, 10) == 1 and lr_factor("cosine", 10, 10) == pytest.approx(0)
    assert lr_factor("step", 8, 10) == pytest.approx(0.01) and lr_factor("cyclic", 4, 10) == pytest.approx(1)
    assert lr_factor(lambda t, e: 0.5, 1, 2) == 0.5


def test_training_is_reproducible(digits):
    X, y, _, _ = digits
    runs = [fit("pgd", X[:128], y[:128], epochs=1, seed=5)[0] for _ in range(2)]
    for p, q in zip(*(r.parameters() for r in runs)):
        torch.testing.assert_close(p, q)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    ({"method": "madry"}, "method"),
    ({"eps": -0.1}, "eps"),
    ({"norm": 3}, "norm"),
    ({"y": np.zeros(5, dtype=np.int64)}, "y"),
    ({"y": np.full(64, 10)}, "y"),
    ({"X": np.full((64, 64), np.nan, dtype=np.float32)}, "X"),
    ({"X": np.full((64, 64), 2.0, dtype=np.float32)}, "X"),
    ({"method": "pgd", "stepz": 3}, "stepz"),
    ({"method": "standard", "beta": 1.0}, "beta"),
    ({"method": "pgd", "steps": 0}, "steps"),
    ({"method": "trades", "beta": -1.0}, "beta"),
    ({"method": "ibp", "kappa": (1.0, 2.0)}, "kappa"),
    ({"method": "ibp", "eps_ramp": (0, 99)}, "eps_ramp"),
    ({"lr_schedule": "exponential"}, "lr_schedule"),
    ({"optimizer": "lbfgs"}, "optimizer"),
    ({"optimizer": "sgd", "momentum": -0.5}, "momentum"),
    ({"epochs": 0}, "epochs"),
    ({"lr": -1.0}, "lr"),
    ({"lower": torch.zeros(3)}, "lower"),
    ({"eval_data": (np.zeros((3, 64), dtype=np.float32),)}, "eval_data"),
])
def test_bad_input_raises(kwargs, match):
    X, y = load_digits(split="train")
    args = dict(X=X[:64], y=y[:64], method="standard", eps=EPS, epochs=1, progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        train(fresh_mlp(hidden=(8,)), **args)


def test_plain_sgd_with_zero_momentum_takes_one_gradient_step():
    X, y = load_digits(split="train")
    X, y = torch.as_tensor(X[:32]), torch.as_tensor(y[:32])
    model = fresh_mlp(hidden=(8,))
    expected = [p.detach().clone() for p in model.parameters()]
    torch.nn.functional.cross_entropy(model(X), y).backward()
    expected = [e - 0.1 * p.grad for e, p in zip(expected, model.parameters())]
    train(model, X, y, method="standard", eps=EPS, epochs=1, batch_size=32, optimizer="sgd", lr=0.1, momentum=0.0,
          progress=False, device="cpu")
    for got, want in zip(model.parameters(), expected):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path):
    X, y = load_digits(split="train")
    X, y = X[:96], y[:96]
    path = tmp_path / "model-{epoch}.pt"
    common = dict(method="pgd", eps=EPS, epochs=3, batch_size=32, steps=2, progress=False, device="cpu",
                  checkpoint=str(path))
    whole = fresh_mlp(hidden=(8,))
    history = train(whole, X, y, **common)
    for suffix in ("", ".state"):  # as if the run had stopped after epoch 2
        (tmp_path / f"model-3.pt{suffix}").unlink()
    resumed = fresh_mlp(hidden=(8,))
    again = train(resumed, X, y, resume=True, **common)
    for a, b in zip(whole.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert again["loss"] == history["loss"] and len(again["checkpoints"]) == 3
    fresh = fresh_mlp(hidden=(8,))
    start = [p.detach().clone() for p in fresh.parameters()]
    train(fresh, X, y, resume=True, **dict(common, checkpoint=str(tmp_path / "none-{epoch}.pt"), epochs=1))
    assert any(not torch.equal(p, q) for p, q in zip(fresh.parameters(), start))  # nothing saved: a fresh start
    with pytest.raises(ValueError, match="checkpoint"):
        train(fresh_mlp(hidden=(8,)), X, y, resume=True, **dict(common, checkpoint=None))
