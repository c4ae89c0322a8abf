"""Soundness and exact identities of the closed-form bound methods (ibp, crown, alpha-crown, dual).

Solver methods (lp, lp-cvxpy, milp) and the cross-method chain have their own suite.
"""
import numpy as np
import pytest
import torch
from torch import nn

from robustopt.sets import Ball
from robustopt.verify import margin_bounds, network, run_method
from robustopt.verify.api import margin_spec
from verify_helpers import NORMS, one_thread, random_instance, sampled_margins  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

CLOSED_FORM = [("ibp", {}), ("crown", {}), ("crown", {"relaxation": "same-slope"}), ("dual", {}),
               ("alpha-crown", {"steps": 5})]


@pytest.mark.parametrize("seed", range(60))
def test_bounds_below_sampled_points_and_identities(seed):
    model, x, y, k, norm, eps = random_instance(seed)
    sampled = sampled_margins(model, x, y, eps, norm)
    got = {}
    for method, opts in CLOSED_FORM:
        b = margin_bounds(model, x, y, eps, norm, method=method, **opts)
        assert (b <= sampled + 1e-9).all(), (method, opts)
        got[(method, tuple(opts.items()))] = b
    crown = got[("crown", ())]
    same_slope = got[("crown", (("relaxation", "same-slope"),))]
    dual = got[("dual", ())]
    finite = torch.isfinite(crown)
    np.testing.assert_allclose(dual[finite], same_slope[finite], rtol=0, atol=1e-9)
    assert (got[("alpha-crown", (("steps", 5),))][finite] >= crown[finite] - 1e-12).all()


@pytest.mark.parametrize("seed", range(6))
def test_pgd_never_beats_the_bounds(seed):
    attacks = pytest.importorskip("robustopt.attacks")
    model, x, y, k, norm, eps = random_instance(seed, n=8)
    result = attacks.pgd(model, x, y, eps, norm=norm, steps=30, loss="margin", seed=0)
    for method, opts in CLOSED_FORM:
        b = margin_bounds(model, x, y, eps, norm, method=method, **opts).amin(1)
        assert (b <= result.margin.double() + 1e-9).all(), method


def _clean_margins(model, x, y):
    logits = model(x).detach()
    return logits.gather(1, y.view(-1, 1)) - logits


@pytest.mark.parametrize("method,opts", CLOSED_FORM)
def test_eps_zero_gives_clean_margins(method, opts):
    for seed in (0, 2):
        model, x, y, k, norm, _ = random_instance(seed)
        b = margin_bounds(model, x, y, 0.0, norm, method=method, **opts)
        expected = _clean_margins(model, x, y)
        mask = torch.isfinite(b)
        np.testing.assert_allclose(b[mask], expected[mask], atol=1e-9)


def _linear_exact(W, bias, x, y, eps, norm):
    """Exact minimum margins of the affine map W x + b over ball ∩ box, from Ball.support (closed form)."""
    C = margin_spec(y, W.shape[0])
    rows = C @ W  # (n, k-1, d)
    low = -Ball(eps, norm).support(-rows, x) + C @ bias
    return low


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("method,opts", CLOSED_FORM)
def test_no_hidden_layer_is_exact(norm, method, opts):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4)).double()
    x, y = torch.rand(7, 5, dtype=torch.float64), torch.randint(0, 4, (7,))
    b = margin_bounds(model, x, y, 0.3, norm, method=method, **opts)
    exact = _linear_exact(model[0].weight.detach(), model[0].bias.detach(), x, y, 0.3, norm)
    np.testing.assert_allclose(b[torch.isfinite(b)].view(7, 3), exact, atol=1e-10)


@pytest.mark.parametrize("norm", NORMS)
def test_all_active_and_all_inactive_relus(norm):
    torch.manual_seed(1)
    x, y = torch.rand(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    first, last = nn.Linear(4, 6).double(), nn.Linear(6, 3).double()
    # all inactive: the output is the last bias whatever x', so every method is exact
    first.bias.data.fill_(-100.0)
    model = nn.Sequential(first, nn.ReLU(), last)
    expected = _clean_margins(model, x, y)
    for method, opts in CLOSED_FORM:
        b = margin_bounds(model, x, y, 0.2, norm, method=method, **opts)
        np.testing.assert_allclose(b[torch.isfinite(b)], expected[torch.isfinite(b)], atol=1e-12)
    # all active: the network is affine; the linear methods are exact, IBP is sound
    first.bias.data.fill_(100.0)
    W = last.weight.detach() @ first.weight.detach()
    bias = last.weight.detach() @ first.bias.detach() + last.bias.detach()
    exact = _linear_exact(W, bias, x, y, 0.2, norm)
    for method, opts in CLOSED_FORM:
        b = margin_bounds(model, x, y, 0.2, norm, method=method, **opts)
        b = b[torch.isfinite(b)].view(5, 2)
        if method == "ibp":
            assert (b <= exact + 1e-9).all()
        else:
            np.testing.assert_allclose(b, exact, atol=1e-9)


@pytest.mark.parametrize("method,opts", CLOSED_FORM)
def test_spec_folding_beats_differencing_logit_bounds(method, opts):
    from robustopt.verify import logit_bounds

    for seed in range(3):
        model, x, y, k, norm, eps = random_instance(seed)
        folded = margin_bounds(model, x, y, eps, norm, method=method, **opts)
        lb, ub = logit_bounds(model, x, eps, norm, method=method, **opts)
        differenced = lb.gather(1, y.view(-1, 1)) - ub
        mask = torch.isfinite(folded)
        assert (folded[mask] >= differenced[mask] - 1e-9).all()
        f = model(x).detach()
        assert (lb <= f + 1e-9).all() and (ub >= f - 1e-9).all()


def test_intermediate_round_trip_and_tightest():
    from robustopt.verify.methods import tightest

    model, x, y, k, norm, eps = random_instance(4)
    crown, inter_c = margin_bounds(model, x, y, eps, norm, method="crown", return_intermediate=True)
    again = margin_bounds(model, x, y, eps, norm, method="crown", intermediate=inter_c)
    torch.testing.assert_close(crown, again)
    _, inter_i = margin_bounds(model, x, y, eps, norm, method="ibp", return_intermediate=True)
    both = tightest(inter_c, inter_i)
    for (lc, uc), (li, ui), (lb, ub) in zip(inter_c, inter_i, both):
        assert (lb >= torch.maximum(lc, li) - 0).all() and (ub <= torch.minimum(uc, ui)).all()
    tighter = margin_bounds(model, x, y, eps, norm, method="dual", intermediate=both)
    net = network(model)
    zs = torch.stack([torch.cat(net.pre_activations(Ball(eps, norm).random(x))[:-1], 1) for _ in range(20)])
    assert (zs >= torch.cat([lo for lo, _ in both], 1) - 1e-9).all()
    assert (zs <= torch.cat([hi for _, hi in both], 1) + 1e-9).all()
    assert torch.isfinite(tighter).sum() == torch.isfinite(crown).sum()


def test_conv_net_with_normalize_batchnorm_and_trailing_relu_is_sound():
    from robustopt.layers import Normalize

    torch.manual_seed(5)
    bn = nn.BatchNorm2d(3)
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    model = nn.Sequential(Normalize([0.4, 0.6], [0.3, 0.2]), nn.Conv2d(2, 3, 3, padding=1), bn, nn.ReLU(),
                          nn.Flatten(), nn.Linear(108, 8), nn.ReLU(), nn.Linear(8, 4), nn.ReLU()).double().eval()
    x, y = torch.rand(6, 2, 6, 6, dtype=torch.float64), torch.randint(0, 4, (6,))
    eps = 0.03
    sampled = sampled_margins(model, x, y, eps, "inf")
    for method, opts in CLOSED_FORM:
        b = margin_bounds(model, x, y, eps, method=method, **opts)
        assert (b <= sampled + 1e-9).all(), method


def test_alpha_crown_improves_with_steps_and_keeps_best():
    model, x, y, k, norm, eps = random_instance(6, n=10)
    crown = margin_bounds(model, x, y, eps, norm, method="crown")
    short = margin_bounds(model, x, y, eps, norm, method="alpha-crown", steps=2)
    longer = margin_bounds(model, x, y, eps, norm, method="alpha-crown", steps=40)
    optimized = margin_bounds(model, x, y, eps, norm, method="crown", relaxation="optimized")
    m = torch.isfinite(crown)
    assert (short[m] >= crown[m] - 1e-12).all() and (optimized[m] >= crown[m] - 1e-12).all()
    assert longer[m].sum() > crown[m].sum()


def test_dual_variables_recompute_the_bound():
    model, x, y, k, norm, eps = random_instance(5)
    net = network(model, input_shape=x.shape[1:]).with_spec(margin_spec(y, k))
    ball = Ball(eps, norm)
    res = run_method("dual", net, x, ball)
    dual = res.info["dual_network"]
    assert dual.residual(net) == 0.0
    J = dual.objective(net, x.flatten(1), ball)
    torch.testing.assert_close(J[:, : k - 1], res.lower)
    # perturbing the variables breaks the dual network's equations: the check notices
    dual.nu_input = dual.nu_input + 1e-3
    assert dual.residual(net) > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(60, 400))
def test_many_more_random_nets(seed):
    test_bounds_below_sampled_points_and_identities(seed)


@pytest.mark.parametrize("seed", [2, 5, 8])
@pytest.mark.parametrize("method", ["ibp", "crown", "dual", "alpha-crown"])
def test_row_chunks_give_the_same_bounds(seed, method):
    model, x, y, k, norm, eps = random_instance(seed)
    opts = {"steps": 3} if method == "alpha-crown" else {}
    whole = margin_bounds(model, x, y, eps, norm, method=method, **opts)
    chunked = margin_bounds(model, x, y, eps, norm, method=method, memory=64, **opts)  # one row per pass
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("method", ["crown", "alpha-crown"])
def test_per_example_rows_give_the_batch_rows_bounds(monkeypatch, seed, method):
    """A batch of small boxes (each with a few unstable neurons, the batch's union many): each example's own
    unstable neurons get backward passes (backward.GATHER_SHARE) with the same values as passes on the union."""
    from robustopt.verify import backward, crown

    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(),
                          nn.Linear(40, 3)).double()
    for p in model.parameters():
        p.data = torch.randn(p.shape, generator=gen, dtype=torch.float64) / p.shape[-1] ** 0.5
    x = torch.rand(64, 4, generator=gen, dtype=torch.float64)
    y = model(x).argmax(1).detach()
    opts = {"steps": 3} if method == "alpha-crown" else {}
    original, per_example = crown.both_signs, []
    monkeypatch.setattr(crown, "both_signs", lambda op, idx: per_example.append(idx.dim() == 2) or original(op, idx))
    inter = []
    for share in (0.0, 1.0):  # never, then whenever the largest count is at most the union's
        per_example.clear()
        monkeypatch.setattr(backward, "GATHER_SHARE", share)
        b, layers = margin_bounds(model, x, y, 0.02, method=method, return_intermediate=True, **opts)
        inter.append((b, layers))
        assert any(per_example) == (share > 0)
    (b0, l0), (b1, l1) = inter
    torch.testing.assert_close(b1, b0, rtol=0, atol=1e-12)
    for (lo0, hi0), (lo1, hi1) in zip(l0, l1):
        torch.testing.assert_close(lo1, lo0, rtol=0, atol=1e-12)
        torch.testing.assert_close(hi1, hi0, rtol=0, atol=1e-12)
    unstable = [((lo < 0) & (hi > 0)) for lo, hi in l0[1:]]
    assert any(int(u.sum(1).max()) < int(u.any(0).sum()) for u in unstable)  # the batch's sets differ


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("method", ["crown", "dual"])
def test_skipping_ibp_stable_neurons_is_sound_and_optional(seed, method):
    """skip_stable=False bounds every neuron by a backward pass (the values before skipping existed); the
    default takes a neuron's stability from one IBP step when that proves it: both are sound."""
    model, x, y, k, norm, eps = random_instance(seed)
    sampled = sampled_margins(model, x, y, eps, norm)
    for skip in (True, False):
        b, inter = margin_bounds(model, x, y, eps, norm, method=method, skip_stable=skip, return_intermediate=True)
        assert (b <= sampled + 1e-9).all()
    net = network(model, input_shape=x.shape[1:])
    zs = [net.pre_activations(Ball(eps, norm).random(x)) for _ in range(10)]
    for layer, (lo, hi) in enumerate(inter):
        for z in zs:
            assert (z[layer] >= lo - 1e-9).all() and (z[layer] <= hi + 1e-9).all()


def test_wide_conv_on_a_cifar_sized_input_forms_no_dense_matrix(monkeypatch):
    """3x32x32 input, a 3x3 32-channel stride-1 conv first (32768 ReLUs): every closed-form method runs
    through the operators; dense() would need a 32768 x 3072 matrix and is made to fail here."""
    from robustopt.verify import operators

    def refuse(self):
        raise AssertionError("a bound method formed a dense matrix")

    monkeypatch.setattr(operators.AffineOp, "dense", refuse)
    monkeypatch.setattr(operators.Linear, "dense", refuse)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 4, 4, stride=4), nn.ReLU(),
                          nn.Flatten(), nn.Linear(256, 10)).double().eval()
    x, y = torch.rand(1, 3, 32, 32, dtype=torch.float64), torch.tensor([3])
    sampled = sampled_margins(model, x, y, 1 / 255, "inf", samples=8)
    for method in ("ibp", "crown", "dual"):
        b = margin_bounds(model, x, y, 1 / 255, method=method)
        assert torch.isfinite(b).sum() == 9 and (b <= sampled + 1e-9).all(), method


@pytest.mark.parametrize("pad,stride", [(0, 1), (1, 2), (2, 1)])
def test_window_pass_equals_the_whole_layer_pass(monkeypatch, pad, stride):
    """Rows of a convolution after convolutions are bounded on windows (verify.patches): same values as the
    whole-layer backward pass, for CROWN's intermediate bounds and alpha-CROWN's (whose searches may then
    part at a tie, so the per-row slopes are compared at their start)."""
    from robustopt.verify import patches

    torch.manual_seed(pad * 7 + stride)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=pad, stride=stride), nn.ReLU(), nn.Conv2d(3, 4, 2, padding=1),
                          nn.ReLU(), nn.Conv2d(4, 2, 3, stride=2, padding=pad), nn.ReLU(), nn.Flatten())
    flat = model(torch.zeros(1, 2, 7, 7)).shape[1]
    model = nn.Sequential(*model, nn.Linear(flat, 3)).double().eval()
    x, y = torch.rand(4, 2, 7, 7, dtype=torch.float64), torch.randint(0, 3, (4,))
    got = {}
    for windows in (True, False):
        if not windows:
            monkeypatch.setattr(patches, "applies", lambda *args: False)
        got[windows] = [margin_bounds(model, x, y, 0.1, method=m, return_intermediate=True, **o)
                        for m, o in (("crown", {}), ("alpha-crown", {"steps": 0}))]  # 0: per-row slopes, no search
    for (b1, i1), (b2, i2) in zip(got[True], got[False]):
        torch.testing.assert_close(b1, b2, rtol=0, atol=1e-10)
        for (l1, u1), (l2, u2) in zip(i1, i2):
            torch.testing.assert_close(l1, l2, rtol=0, atol=1e-10)
            torch.testing.assert_close(u1, u2, rtol=0, atol=1e-10)
