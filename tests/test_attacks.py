"""robustopt.attacks on small synthetic models: exactness on linear models, feasibility, hygiene, bad input."""
import numpy as np
import pytest
import torch
from torch import nn

from robustopt import models
from robustopt.attacks import AttackResult, apgd, evaluate_robustness, fgsm, margin, pgd
from robustopt.sets import Ball

NORMS = ["inf", 2, 1]


pytestmark = pytest.mark.usefixtures("one_thread")


def _exact_linear_margin(layer, x, y, ball):
    r"""min over the ball of min_{j != y} (w_y - w_j).x' + b_y - b_j = b_y - b_j - support(-(w_y - w_j), x)."""
    W, b = layer.weight.detach(), layer.bias.detach()
    n, k = len(x), W.shape[0]
    diff = W[y][:, None, :] - W[None, :, :]  # (n, k, d): w_y - w_j
    exact = (b[y][:, None] - b[None, :]) - ball.support(-diff, x)
    exact[torch.arange(n), y] = torch.inf
    return exact.min(1).values


def _linear_instance(classes, seed=0, n=12, d=9):
    torch.manual_seed(seed)
    layer = nn.Linear(d, classes).double()
    x = torch.rand(n, d, dtype=torch.float64)
    y = layer(x).argmax(1)
    return layer, x, y


@pytest.mark.parametrize("norm", ["inf", 2])
@pytest.mark.parametrize("box", [(0.0, 1.0), (None, None)], ids=["box", "nobox"])
@pytest.mark.parametrize("classes", [2, 4])
def test_pgd_reaches_the_exact_worst_case_of_a_linear_model(norm, box, classes):
    layer, x, y = _linear_instance(classes)
    eps = torch.linspace(0.005, 0.3, len(x), dtype=torch.float64)  # one radius per example
    ball = Ball(eps, norm, *box)
    exact = _exact_linear_margin(layer, x, y, ball)
    assert (exact < 0).any() and (exact > 0).any()  # a mix of robust and non-robust examples
    # two classes: the problem is convex; more: one run per target class (each pairwise margin is linear)
    targets = None if classes == 2 else classes - 1
    result = pgd(layer, x, y, eps, norm=norm, steps=200, loss="margin", lower=box[0], upper=box[1], seed=0,
                 n_targets=targets)
    torch.testing.assert_close(result.margin, exact, rtol=0, atol=1e-4)
    assert (result.margin >= exact - 1e-9).all()  # an attack never beats the exact value
    result = apgd(layer, x, y, eps, norm=norm, steps=100, loss="margin", lower=box[0], upper=box[1], seed=0,
                  n_targets=classes - 1)
    torch.testing.assert_close(result.margin, exact, rtol=0, atol=1e-4)


@pytest.mark.parametrize("norm", NORMS)
def test_attacks_are_upper_bounds_on_the_exact_margin(norm):
    layer, x, y = _linear_instance(5, seed=1)
    ball = Ball(0.2, norm)
    exact = _exact_linear_margin(layer, x, y, ball)
    for result in [fgsm(layer, x, y, 0.2, norm=norm), pgd(layer, x, y, 0.2, norm=norm, loss="margin", seed=0),
                   apgd(layer, x, y, 0.2, norm=norm, loss="dlr", seed=0)]:
        assert (result.margin >= exact - 1e-9).all()


def _mlp(seed=0, d=20, classes=6, dtype=torch.float32):
    torch.manual_seed(seed)
    return models.mlp(d, (32, 32), classes).to(dtype)


@pytest.mark.parametrize("norm", NORMS)
def test_every_point_lies_in_ball_and_box(norm):
    model = _mlp()
    torch.manual_seed(1)
    n, d = 16, 20
    x = torch.rand(n, d)
    y = torch.randint(0, 6, (n,))
    eps = torch.linspace(0.0, 0.6, n)  # one radius per example, zero included
    lower = torch.full((d,), 0.1).minimum(x.min(0).values)  # a per-coordinate box containing x
    upper = torch.full((d,), 0.9).maximum(x.max(0).values)
    ball = Ball(eps, norm, lower, upper)
    runs = [fgsm(model, x, y, eps, norm=norm, lower=lower, upper=upper),
            pgd(model, x, y, eps, norm=norm, lower=lower, upper=upper, steps=15, restarts=2, seed=0),
            pgd(model, x, y, eps, norm=norm, lower=lower, upper=upper, steps=15, step_size=0.5, seed=0,
                early_stop=True, loss="margin"),
            apgd(model, x, y, eps, norm=norm, lower=lower, upper=upper, steps=15, seed=0, loss="dlr", n_targets=2)]
    for result in runs:
        assert isinstance(result, AttackResult) and len(result) == n
        assert ball.contains(result.x_adv, x, atol=1e-6).all()
        assert (result.x_adv[0] == x[0]).all()  # eps = 0 leaves the point where it is
        with torch.no_grad():
            recomputed = margin(model(result.x_adv), y)
        torch.testing.assert_close(result.margin, recomputed)
        assert torch.equal(result.success, result.margin <= 0)


def test_unbounded_box_and_default_box():
    model = _mlp()
    x = torch.rand(8, 20)
    y = torch.zeros(8, dtype=torch.long)
    free = pgd(model, x, y, 0.5, lower=None, upper=None, steps=10, seed=0)
    assert Ball(0.5, "inf", None, None).contains(free.x_adv, x).all()
    boxed = pgd(model, x, y, 0.5, steps=10, seed=0)
    assert (boxed.x_adv >= 0).all() and (boxed.x_adv <= 1).all()


def test_targeted_success_means_the_target_is_the_argmax():
    model = _mlp()
    torch.manual_seed(2)
    x = torch.rand(32, 20)
    logits = model(x)
    y, target = logits.topk(2, dim=1).indices.unbind(1)  # the runner-up class as target
    for result in [pgd(model, x, y, 0.5, targeted=target, seed=0, loss=loss) for loss in ("ce", "margin")] + \
                  [fgsm(model, x, y, 0.5, targeted=target)]:
        with torch.no_grad():
            logits = model(result.x_adv)
        reached = logits.gather(1, target[:, None])[:, 0] >= logits.max(1).values
        assert torch.equal(result.success, reached)
        assert result.success.any()
        torch.testing.assert_close(result.margin, margin(logits, y))


def test_more_restarts_are_never_worse_and_runs_are_deterministic():
    model = _mlp(seed=3)
    torch.manual_seed(4)
    x = torch.rand(64, 20)
    y = model(x).argmax(1)
    one = pgd(model, x, y, 0.15, steps=5, restarts=1, seed=7)
    again = pgd(model, x, y, 0.15, steps=5, restarts=1, seed=7)
    assert torch.equal(one.x_adv, again.x_adv)
    other_seed = pgd(model, x, y, 0.15, steps=5, restarts=1, seed=8)
    assert not torch.equal(one.x_adv, other_seed.x_adv)
    previous = one.margin
    for restarts in (2, 4):
        more = pgd(model, x, y, 0.15, steps=5, restarts=restarts, seed=7)
        assert (more.margin <= previous).all()
        previous = more.margin
    assert (previous < one.margin).any()  # restarts do help somewhere
    apgd_one = apgd(model, x, y, 0.15, steps=10, restarts=1, seed=7)
    apgd_two = apgd(model, x, y, 0.15, steps=10, restarts=2, seed=7)
    assert (apgd_two.margin <= apgd_one.margin).all()


def test_early_stop_keeps_every_success_and_freezes_fooled_points():
    model = _mlp(seed=0, dtype=torch.float64)
    torch.manual_seed(6)
    x = torch.rand(64, 20, dtype=torch.float64)
    y = model(x).argmax(1)
    full = pgd(model, x, y, 0.2, steps=20, seed=0, loss="margin")
    early = pgd(model, x, y, 0.2, steps=20, seed=0, loss="margin", early_stop=True)
    assert (early.success | ~full.success).all()  # the same path until fooled, then frozen
    assert 0 < int(early.success.sum()) < len(x)
    assert (early.margin[~early.success] == full.margin[~early.success]).all()


class _Stateful(nn.Module):
    """A model whose submodules are in mixed train / eval states, with dropout that would make attacks random."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(20, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.body(x))


@pytest.mark.parametrize("attack", ["fgsm", "pgd", "apgd", "evaluate"])
def test_hygiene_modes_gradients_input_and_running_stats(attack):
    model = _Stateful()
    model.train()
    model.body[1].eval()  # a mixed state must come back exactly
    model.head.weight.grad = torch.full_like(model.head.weight, 0.5)  # an existing gradient must stay
    stats = model.body[1].running_mean.clone()
    x = torch.rand(10, 20, requires_grad=True)
    x_before = x.detach().clone()
    y = torch.arange(10) % 4
    flags = [m.training for m in model.modules()]
    call = {"fgsm": lambda: fgsm(model, x, y, 0.1), "pgd": lambda: pgd(model, x, y, 0.1, steps=3, seed=0),
            "apgd": lambda: apgd(model, x, y, 0.1, steps=3, seed=0),
            "evaluate": lambda: evaluate_robustness(model, x.detach(), y, attack="ensemble", eps=0.1, steps=3,
                                                    progress=False)}[attack]
    call()
    assert [m.training for m in model.modules()] == flags
    assert torch.equal(model.head.weight.grad, torch.full_like(model.head.weight, 0.5))
    assert all(p.grad is None for name, p in model.named_parameters() if name != "head.weight")
    assert torch.equal(x.detach(), x_before) and x.grad is None
    assert torch.equal(model.body[1].running_mean, stats)


def test_float64_and_dtype_follow_the_model():
    model = _mlp(dtype=torch.float64)
    x = torch.rand(6, 20)  # float32 input, float64 model: the attack runs in the model's dtype
    y = torch.zeros(6, dtype=torch.long)
    for result in [pgd(model, x, y, 0.1, steps=3, seed=0), apgd(model, x, y, 0.1, steps=3, seed=0)]:
        assert result.x_adv.dtype == torch.float64 and result.margin.dtype == torch.float64
    x64 = torch.rand(6, 20, dtype=torch.float64)
    result = pgd(_mlp(), x64, y, 0.1, steps=3, seed=0)
    assert result.x_adv.dtype == torch.float32


def test_image_batches_and_numpy_inputs():
    torch.manual_seed(0)
    model = models.cnn_small(1, 8, 10)
    x = torch.rand(5, 1, 8, 8)
    y = torch.arange(5)
    result = pgd(model, x, y, 0.1, steps=3, seed=0)
    assert result.x_adv.shape == x.shape
    result_np = pgd(model, x.numpy(), y.numpy(), 0.1, steps=3, seed=0)
    assert torch.equal(result.x_adv, result_np.x_adv)


@pytest.mark.parametrize("call, match", [
    (lambda m, x, y: pgd(m, x, y, -0.1), "eps"),
    (lambda m, x, y: pgd(m, x, y, float("nan")), "eps"),
    (lambda m, x, y: pgd(m, x, y, torch.full((3,), 0.1)), "eps"),
    (lambda m, x, y: pgd(m, x, y + 6, 0.1), "y has labels out of range"),
    (lambda m, x, y: pgd(m, x, y[:4], 0.1), "y must have shape"),
    (lambda m, x, y: pgd(m, x, y.float(), 0.1), "y must hold integer"),
    (lambda m, x, y: pgd(m, x, y, 0.1, norm=3), "norm"),
    (lambda m, x, y: pgd(m, x, y, 0.1, loss="hinge"), "loss"),
    (lambda m, x, y: fgsm(m, x, y, 0.1, loss="hinge"), "loss"),
    (lambda m, x, y: apgd(m, x, y, 0.1, loss="xent"), "loss"),
    (lambda m, x, y: pgd(m, torch.where(x > 0.5, torch.nan, x), y, 0.1), "x contains NaN"),
    (lambda m, x, y: pgd(m, x + 2, y, 0.1), "box"),
    (lambda m, x, y: pgd(m, x, y, 0.1, steps=0), "steps"),
    (lambda m, x, y: pgd(m, x, y, 0.1, restarts=0), "restarts"),
    (lambda m, x, y: pgd(m, x, y, 0.1, step_size=-1.0), "step_size"),
    (lambda m, x, y: pgd(m, x, y, 0.1, step_size=0.0), "step_size"),
    (lambda m, x, y: pgd(m, x, y, 0.1, targeted=y), "targeted must differ"),
    (lambda m, x, y: pgd(m, x, y, 0.1, targeted=(y + 1) % 6, n_targets=2), "n_targets"),
    (lambda m, x, y: pgd(m, x, y, 0.1, targeted=torch.full((5,), 9)), "targeted has labels out of range"),
    (lambda m, x, y: apgd(m, x, y, 0.1, n_targets=6), "n_targets"),
    (lambda m, x, y: apgd(m, x, y, 0.1, rho=2.0), "rho"),
    (lambda m, x, y: pgd(m, x, y, 0.1, seed=-1), "seed"),
    (lambda m, x, y: pgd(m, x[0], y, 0.1), "x must have shape"),
    (lambda m, x, y: pgd(m, x, y, 0.1, lower=torch.zeros(3)), "broadcast"),
    (lambda m, x, y: pgd("model", x, y, 0.1), "model"),
])
def test_bad_input_raises_value_error_naming_the_argument(call, match):
    model = _mlp()
    x = torch.rand(5, 20)
    y = torch.arange(5)
    with pytest.raises(ValueError, match=match):
        call(model, x, y)


def test_dlr_needs_enough_classes():
    layer, x, y = _linear_instance(3)
    apgd(layer, x, y, 0.1, loss="dlr", steps=2, seed=0)  # 3 classes: untargeted DLR is defined
    with pytest.raises(ValueError, match="dlr.*4 classes"):
        apgd(layer, x, y, 0.1, loss="dlr", steps=2, n_targets=1)


# ---------------------------------------------------------------------------------------------- evaluate_robustness
def _random_task(n=90, seed=0):
    model = _mlp(seed=seed)
    torch.manual_seed(seed + 10)
    X = torch.rand(n, 20)
    y = model(X).argmax(1)
    y[:5] = (y[:5] + 1) % 6  # a few misclassified examples
    return model, X.numpy(), y.numpy()


def test_evaluate_robustness_batches_and_accounting():
    model, X, y = _random_task()
    out = evaluate_robustness(model, X, y, attack="pgd", eps=0.05, seed=0, batch_size=1000, progress=False)
    assert out["clean_accuracy"] == pytest.approx(85 / 90)
    assert out["robust_accuracy"] <= out["clean_accuracy"]
    assert out["margin"].shape == out["clean_margin"].shape == out["robust"].shape == (90,)
    assert (out["margin"] <= out["clean_margin"]).all()
    assert (out["margin"][out["robust"]] > 0).all()
    assert not out["robust"][:5].any()
    # a deterministic attack gives the same answer whatever the batching
    one = evaluate_robustness(model, X, y, attack="fgsm", eps=0.05, batch_size=1000, progress=False)
    small = evaluate_robustness(model, X, y, attack="fgsm", eps=0.05, batch_size=7, progress=False)
    assert np.array_equal(one["robust"], small["robust"])
    np.testing.assert_allclose(one["margin"], small["margin"], rtol=1e-5, atol=1e-6)


def test_evaluate_robustness_slices_per_example_arguments():
    model, X, y = _random_task()
    eps = np.where(np.arange(90) % 2 == 0, 0.0, 0.3)
    out = evaluate_robustness(model, X, y, attack="fgsm", eps=eps, batch_size=16, progress=False)
    clean = out["clean_margin"] > 0
    assert (out["robust"][::2] == clean[::2]).all()  # eps = 0: robust iff correct
    assert out["robust"][1::2].sum() < clean[1::2].sum()


def test_ensemble_is_at_least_as_strong_as_its_first_attack():
    model, X, y = _random_task()
    single = evaluate_robustness(model, X, y, attack="pgd", eps=0.1, loss="margin", steps=20, seed=3,
                                 early_stop=True, progress=False)
    ensemble = evaluate_robustness(model, X, y, attack="ensemble", eps=0.1, steps=20, seed=3, progress=False)
    assert not (ensemble["robust"] & ~single["robust"]).any()
    assert set(ensemble["fooled_by"]) <= {"pgd-margin", "apgd-ce", "apgd-t-dlr"}
    assert ensemble["fooled_by"]["pgd-margin"] == int(single["robust"].size - single["robust"].sum()
                                                       - (single["clean_margin"] <= 0).sum())


def test_evaluate_robustness_custom_attack_and_bad_options():
    model, X, y = _random_task()
    out = evaluate_robustness(model, X, y, attack=lambda m, x, t, eps: fgsm(m, x, t, eps), eps=0.1, progress=False)
    assert out["robust_accuracy"] <= out["clean_accuracy"]
    for kwargs, match in [({"attack": "cw", "eps": 0.1}, "attack"), ({"attack": "pgd"}, "eps"),
                          ({"attack": "ensemble", "eps": 0.1, "loss": "ce"}, "unknown option"),
                          ({"attack": "pgd", "eps": 0.1, "batch_size": 0}, "batch_size"),
                          ({"attack": "pgd", "eps": 0.1, "momentum": 0.9}, "momentum")]:
        with pytest.raises(ValueError, match=match):
            evaluate_robustness(model, X, y, progress=False, **kwargs)
    with pytest.raises(ValueError, match="out of range"):
        evaluate_robustness(model, X, y + 6, eps=0.1, progress=False)
