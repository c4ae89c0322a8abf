"""verify_property: verdicts agree with certify's and with an exhaustive grid on tiny networks; ties count as
counterexamples; witnesses replay; the objective network is the property's function; bad input."""
import numpy as np
import pytest
import torch
from torch import nn

from robustopt.verify import certify
from robustopt.vnnlib import Property, local_robustness, verify_property
from robustopt.vnnlib.objective import objective_model
from vnn_helpers import digits_model, grid_objective, lipschitz_inf, tiny_net

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return digits_model()


def _check_report(model, prop, report):
    assert report["result"] in ("sat", "unsat", "timeout", "unknown")
    assert report["seconds"] >= 0
    if report["result"] == "sat":
        cex = report["counterexample"]
        assert prop.contains(cex["x"])[0] and prop.satisfies_output(cex["y"])[0]
        ok, y = prop.check_witness(model, cex["x"])
        assert ok and np.array_equal(y, cex["y"])
    else:
        assert report["counterexample"] is None


def test_verdicts_agree_with_certify_milp(digits):
    model, Xt, yt = digits
    X, y = Xt[:8], yt[:8]
    results = []
    for eps in (0.02, 0.08):
        cert = certify(model, X, y, eps, method="milp", progress=False)
        for x, label, status in zip(X, y, cert.status):
            prop = local_robustness(x, int(label), eps, 10)
            report = verify_property(model, prop, time_limit=None)
            _check_report(model, prop, report)
            assert report["result"] in ("sat", "unsat")  # exact MILP, no time limit: decided on this small net
            if status != "unknown":
                assert report["result"] == {"certified": "unsat", "falsified": "sat"}[status], (eps, status)
            results.append(report["result"])
    assert set(results) == {"sat", "unsat"}, f"want both holding and violated properties; got {results}"


@pytest.mark.parametrize("seed", range(8))
def test_tiny_networks_match_an_exhaustive_grid(seed):
    """Local robustness and general disjunctions (conjunctions of 1-3 rows) on 2-D inputs, with and without
    the attack (then the MILP must find the witnesses): unsat only when the grid minimum of min_i h_i is > 0,
    sat whenever it is <= 0 (always with a replayed witness), and decided unless within the grid's slack."""
    rng = np.random.default_rng(seed)
    model = tiny_net(seed, final_relu=seed % 3 == 2)
    x = rng.uniform(0.2, 0.8, size=2)
    with torch.no_grad():
        label = int(model(torch.as_tensor(x)[None]).argmax())
    props = [local_robustness(x, label, eps, 3) for eps in (0.03, 0.1, 0.3)]
    disjuncts = [(rng.normal(size=(m, 3)), rng.normal(size=m)) for m in rng.integers(1, 4, size=3)]
    props.append(Property(np.clip(x - 0.15, 0, 1), np.clip(x + 0.15, 0, 1), disjuncts, 3))
    for prop in props:
        minimum, spacing = grid_objective(model, prop)
        rows = max(1.0, max(np.abs(A).sum(1).max() for A, _ in prop.disjuncts))
        slack = lipschitz_inf(model) * rows * spacing / 2
        for attack in (True, False):
            report = verify_property(model, prop, attack=attack, time_limit=None)
            _check_report(model, prop, report)
            assert report["result"] in ("sat", "unsat")
            if report["result"] == "unsat":
                assert minimum > 0 and (report["disjunct_lower"] > 0).all()
            else:
                assert minimum <= slack
            if minimum <= 0:
                assert report["result"] == "sat"


def test_objective_model_is_the_property_function():
    rng = np.random.default_rng(0)
    disjuncts = [(rng.normal(size=(m, 4)), rng.normal(size=m)) for m in (1, 2, 3, 5, 8)]
    prop = Property(np.zeros(3), np.ones(3), disjuncts, 4)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 4))
    h = objective_model(model, prop)
    assert next(model.parameters()).dtype == torch.float32  # the model itself is left alone
    x = torch.rand(50, 3, dtype=torch.float64)
    Y = model.double()(x).detach().numpy()
    expected = np.stack([(Y @ A.T - b).max(1) for A, b in disjuncts], 1)
    np.testing.assert_allclose(h(x).detach().numpy(), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(objective_model(model, prop, [3, 1])(x).detach().numpy(), expected[:, [3, 1]],
                               rtol=0, atol=1e-12)


def _tied_net(final_relu=False):
    """Two outputs that are always equal: every point is a counterexample to 'Y_1 >= Y_0' (a tie)."""
    first = nn.Linear(2, 4)
    last = nn.Linear(4, 2)
    with torch.no_grad():
        last.weight[1] = last.weight[0]
        last.bias[1] = last.bias[0]
    layers = [first, nn.ReLU(), last] + ([nn.ReLU()] if final_relu else [])
    return nn.Sequential(*layers).double().eval()


def _boundary_net(final_relu=False):
    """Y_0 = relu(x_0 - 0.5), Y_1 = 0: on the box x_0 in [0.5, 1] the margin Y_0 - Y_1 is 0 only at x_0 = 0.5."""
    first, last = nn.Linear(2, 1), nn.Linear(1, 2)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, 0.0]]))
        first.bias.fill_(-0.5)
        last.weight.copy_(torch.tensor([[1.0], [0.0]]))
        last.bias.zero_()
    return nn.Sequential(first, nn.ReLU(), last, *([nn.ReLU()] if final_relu else [])).double().eval()


@pytest.mark.parametrize("final_relu", [False, True])
def test_ties_are_counterexamples(final_relu):
    torch.manual_seed(1)
    tied = _tied_net(final_relu)
    report = verify_property(tied, local_robustness(np.array([0.5, 0.5]), 0, 0.1, 2))
    assert report["result"] == "sat" and report["counterexample"]["y"][0] == report["counterexample"]["y"][1]

    model = _boundary_net(final_relu)
    prop = local_robustness(np.array([0.75, 0.5]), 0, 0.25, 2)  # x_0 in [0.5, 1] exactly
    for method, attack in (("auto", True), ("auto", False), ("milp", False), ("bab", False)):
        report = verify_property(model, prop, method=method, attack=attack, time_limit=None)
        assert report["result"] == "sat", (method, attack)
        x, y = report["counterexample"]["x"], report["counterexample"]["y"]
        assert x[0] == 0.5 and y[0] == y[1] == 0.0
    # the best lower bound on Y_0 - Y_1 is 0 (attained): it refutes nothing, so never unsat
    report = verify_property(model, prop, method="crown", attack=False)
    assert report["result"] == "unknown" and report["disjunct_lower"][0] <= 0


def test_incomplete_methods_and_time_limit(digits):
    model, Xt, yt = digits
    prop = local_robustness(Xt[0], int(yt[0]), 0.3, 10)  # far too large: violated
    assert verify_property(model, prop, method="crown")["result"] == "sat"
    report = verify_property(model, prop, method="crown", attack=False)
    assert report["result"] == "unknown" and report["decided_by"] is None
    small = local_robustness(Xt[0], int(yt[0]), 0.001, 10)
    report = verify_property(model, small, method="ibp")
    assert report["result"] == "unsat" and report["decided_by"] == "ibp" and (report["disjunct_lower"] > 0).all()
    hard = local_robustness(Xt[3], int(yt[3]), 0.08, 10)
    assert verify_property(model, hard, time_limit=1e-4, attack=False)["result"] == "timeout"


def test_bad_input(digits):
    model, Xt, yt = digits
    prop = local_robustness(Xt[0], int(yt[0]), 0.01, 10)
    with pytest.raises(ValueError, match="method"):
        verify_property(model, prop, method="deeppoly")
    with pytest.raises(ValueError, match="time_limit"):
        verify_property(model, prop, time_limit=-1)
    with pytest.raises(ValueError, match="Property"):
        verify_property(model, "prop.vnnlib")
    with pytest.raises(ValueError, match="input_shape"):
        verify_property(model, prop, input_shape=(8, 9))
    wrong = local_robustness(Xt[0], 0, 0.01, 3)
    with pytest.raises(ValueError, match="outputs"):
        verify_property(model, wrong)
    for options, match in (({"time_limit": 5}, "complete_options"), ([("branching", "fsb")], "complete_options"),
                           ({"branching": "random"}, "branching"), ({"beam": 2}, "unknown option")):
        with pytest.raises(ValueError, match=match):
            verify_property(model, local_robustness(Xt[3], int(yt[3]), 0.08, 10), method="bab", attack=False,
                            complete_options=options)


@pytest.mark.parametrize("seed", range(8))  # sat in the first box (2, 4, 6), in the second only (0, 1, 3, 5), unsat (7)
def test_union_of_boxes_matches_an_exhaustive_grid(seed):
    """A property over two input boxes, each with its own condition: sat iff some box's grid minimum is <= 0
    (witness in that box, replayed), unsat only when both are > 0; the parts' reports and bounds are kept."""
    from robustopt.vnnlib import PropertyUnion

    rng = np.random.default_rng(100 + seed)
    model = tiny_net(seed)
    parts = []
    for k in range(2):
        centre = rng.uniform(0.2, 0.8, size=2)
        disjuncts = [(rng.normal(size=(m, 3)), rng.normal(size=m) - 2 * (k == 0) - seed % 2)
                     for m in rng.integers(1, 3, size=2)]
        parts.append(Property(centre - 0.1, centre + 0.1, disjuncts, 3))
    union = PropertyUnion(tuple(parts))
    minima = [grid_objective(model, part) for part in parts]
    report = verify_property(model, union, time_limit=None)
    assert report["result"] in ("sat", "unsat") and 1 <= len(report["parts"]) <= 2
    assert report["disjunct_lower"].shape == (sum(len(p.disjuncts) for p in parts),)
    if report["result"] == "sat":
        ok, y = union.check_witness(model, report["counterexample"]["x"])
        assert ok and np.array_equal(y, report["counterexample"]["y"])
        part = len(report["parts"]) - 1
        assert parts[part].contains(report["counterexample"]["x"])[0]
        assert all(r["result"] == "unsat" for r in report["parts"][:-1])
    else:
        assert all(minimum > 0 for minimum, _ in minima) and (report["disjunct_lower"] > 0).all()
        assert report["counterexample"] is None
    if any(minimum <= 0 for minimum, _ in minima):
        assert report["result"] == "sat"


def test_a_conjunction_is_refuted_by_a_combination_of_its_rows():
    """``y <= 0.2 and y >= 0.8`` holds nowhere, yet neither row alone is refuted on the box: alpha-CROWN on h
    (the max tree, its pass-through neurons stable) finds the combination (1/2, 1/2); rows alone cannot."""
    model = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 1)).double()
    with torch.no_grad():  # y = relu(x) - relu(-x) = x
        model[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        model[0].bias.zero_()
        model[2].weight.copy_(torch.tensor([[1.0, -1.0]]))
        model[2].bias.zero_()
    prop = Property(np.array([-2.0]), np.array([3.0]), [(np.array([[1.0], [-1.0]]), np.array([0.2, -0.8]))], 1)
    h = objective_model(model, prop)
    x = torch.linspace(-2, 3, 101, dtype=torch.float64).view(-1, 1)
    np.testing.assert_allclose(h(x).numpy()[:, 0], np.maximum(x[:, 0] - 0.2, 0.8 - x[:, 0]).numpy(), atol=1e-12)
    for method, refuted in (("crown", False), ("alpha-crown", True)):
        report = verify_property(model, prop, method=method, time_limit=None)
        assert report["result"] == ("unsat" if refuted else "unknown"), method
        assert (report["disjunct_lower"][0] > 0) == refuted
    assert 0 < report["disjunct_lower"][0] <= 0.3 + 1e-9  # at most the true minimum, 0.3 at x = 0.5


def _general_case(seed):
    """A random small net (MLP or conv, verify_helpers.random_net) and a property on a box in [0, 1] with 1-3
    disjuncts of 1-3 rows each, offsets drawn so that both verdicts occur."""
    from verify_helpers import random_net

    model, shape, k = random_net(seed)
    model.input_shape = shape  # as robustopt.onnx.load sets it: witnesses are replayed in this shape
    rng = np.random.default_rng(500 + seed)
    centre = rng.uniform(0.2, 0.8, size=int(np.prod(shape)))
    radius = rng.uniform(0.03, 0.2)
    disjuncts = [(rng.normal(size=(m, k)), rng.normal(size=m) * 2 - 1.5) for m in rng.integers(1, 4, size=rng.integers(1, 4))]
    return model, shape, Property(np.clip(centre - radius, 0, 1), np.clip(centre + radius, 0, 1), disjuncts, k)


def _bab_equals_milp(seed, time_limit=None, branching=None):
    model, _, prop = _general_case(seed)
    options = {"bab": {} if branching is None else {"branching": branching}, "milp": {}}
    got = {m: verify_property(model, prop, method=m, time_limit=time_limit, attack=False,
                              complete_options=options[m]) for m in ("bab", "milp")}
    for report in got.values():
        _check_report(model, prop, report)
    assert got["bab"]["result"] == got["milp"]["result"] in ("sat", "unsat"), (seed, got["bab"]["result"],
                                                                              got["milp"]["result"])
    return got["bab"]["result"]


@pytest.mark.parametrize("seed", range(12))
def test_bab_verdicts_equal_the_milp_on_general_properties(seed):
    """Disjunctions of conjunctions on random MLPs and conv nets, attacks off (the complete stage decides): branch
    and bound (input splitting below 21 free inputs, ReLU splitting above) and the MILP give the same verdict."""
    _bab_equals_milp(seed)


@pytest.mark.parametrize("seed", range(4))
def test_babsr_branching_verdicts_equal_the_milp_on_general_properties(seed):
    """The same with ``complete_options={"branching": "babsr"}`` (ReLU splits' default is "fsb")."""
    _bab_equals_milp(seed, branching="babsr")


@pytest.mark.slow
def test_bab_verdicts_equal_the_milp_on_general_properties_sweep():
    verdicts = [_bab_equals_milp(seed, time_limit=60.0) for seed in range(12, 312)]  # a time-out fails it too
    assert verdicts.count("sat") > 50 and verdicts.count("unsat") > 50, verdicts.count("sat")
