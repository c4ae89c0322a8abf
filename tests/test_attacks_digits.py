"""robustopt.attacks on an undefended network trained on the embedded digits (trained once per module)."""
import numpy as np
import pytest
import torch

from robustopt import models
from robustopt.attacks import apgd, evaluate_robustness, fgsm, pgd
from robustopt.data import load_digits
from robustopt.sets import Ball


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(one_thread):
    X, y = load_digits(split="train")
    torch.manual_seed(0)
    model = models.mlp(64, (64, 64), 10)
    models.fit(model, X, y, epochs=30, lr=3e-3, batch_size=64, progress=False, device="cpu", seed=0)
    Xt, yt = load_digits(split="test")
    x, labels = torch.as_tensor(Xt), torch.as_tensor(yt)
    with torch.no_grad():
        correct = model(x).argmax(1) == labels
    assert correct.float().mean() > 0.93
    return model, x[correct][:200], labels[correct][:200]


def test_targeted_pgd_reaches_the_target(trained):
    model, x, y = trained
    target = (y + 3) % 10
    result = pgd(model, x, y, 0.3, targeted=target, steps=40, seed=0)
    with torch.no_grad():
        predicted = model(result.x_adv).argmax(1)
    assert torch.equal(result.success, predicted == target)
    assert result.success.float().mean() > 0.95
    assert Ball(0.3).contains(result.x_adv, x).all()
    one_step = fgsm(model, x, y, 0.3, targeted=target)
    assert one_step.success.float().mean() < result.success.float().mean()


def test_more_restarts_never_worse_per_example(trained):
    model, x, y = trained
    margins = [pgd(model, x, y, 0.08, steps=10, restarts=r, seed=11).margin for r in (1, 2, 3)]
    assert (margins[1] <= margins[0]).all() and (margins[2] <= margins[1]).all()
    assert (margins[2] < margins[0]).any()


@pytest.mark.parametrize("eps", [0.05, 0.1])
def test_apgd_is_never_weaker_than_pgd_with_the_same_budget(trained, eps):
    model, x, y = trained
    for loss in ("ce", "margin"):
        plain = pgd(model, x, y, eps, steps=50, loss=loss, seed=0)
        adaptive = apgd(model, x, y, eps, steps=50, loss=loss, seed=0)
        assert adaptive.success.sum() >= plain.success.sum()
        assert adaptive.margin.mean() <= plain.margin.mean()


def test_margin_and_ensemble_are_stronger_than_cross_entropy(trained):
    model, x, y = trained
    X, labels = x.numpy(), y.numpy()
    ce = evaluate_robustness(model, X, labels, attack="pgd", eps=0.1, seed=0, progress=False)
    ensemble = evaluate_robustness(model, X, labels, attack="ensemble", eps=0.1, seed=0, progress=False)
    assert ensemble["clean_accuracy"] == 1.0
    assert ensemble["robust_accuracy"] < ce["robust_accuracy"]
    assert np.all(ensemble["margin"][ensemble["robust"]] > 0)


def test_train_mode_gradients_and_input_untouched_on_a_trained_model(trained):
    model, x, y = trained
    model.train()
    x_before = x.clone()
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]  # fit leaves its last ones
    try:
        pgd(model, x, y, 0.1, steps=5, seed=0)
        apgd(model, x, y, 0.1, steps=5, seed=0, n_targets=2, loss="dlr")
        assert model.training and all(m.training for m in model.modules())
        for p, g in zip(model.parameters(), grads):
            assert (p.grad is None and g is None) or torch.equal(p.grad, g)
        assert torch.equal(x, x_before)
    finally:
        model.eval()
