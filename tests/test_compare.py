"""robustopt.compare: the bound chain on a small network, the four outputs, the JSON round trip, loud violations."""
import json
import math

import numpy as np
import pytest
import torch

from robustopt import models
from robustopt.compare import BoundChainWarning, Comparison, check_chain, compare

pytestmark = pytest.mark.usefixtures("one_thread")

ALL = ("pgd", "apgd", "ibp", "crown", "alpha-crown", "dual", "lp", "milp")
EPS = [0.02, 0.08]


@pytest.fixture(scope="module")
def small():
    """A 10-16-16-4 ReLU network and 8 points of [0, 1]^10, labelled mostly by the network itself."""
    torch.manual_seed(3)
    model = models.mlp(10, (16, 16), 4).eval()
    X = torch.rand(8, 10, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y = model(X).argmax(1)
    y[0] = (y[0] + 1) % 4  # one misclassified example
    return model, X, y


@pytest.fixture(scope="module")
def comparison(small):
    model, X, y = small
    return compare(model, X, y, EPS, methods=ALL, attack_steps=30, exact="all", progress=False)


def test_chain_holds_and_every_relation_was_checked(comparison):
    assert comparison.ok and comparison.violations == []
    # per level: every method vs the points (8 methods incl. milp... 6 bound methods), each vs the MILP, LP vs 4
    # closed-form methods, alpha-CROWN vs CROWN; 8 examples x 3 classes
    assert comparison.settings["chain_checks"] >= 2 * 8 * 3 * (6 + 5 + 4 + 1)
    assert all(s["chain_ok"] for s in comparison.summary)


def test_per_example_order_of_the_bounds(comparison):
    closed_form = ("ibp", "crown", "alpha-crown", "dual")
    for row in comparison.rows:
        assert not math.isnan(row["exact"]), "the MILP of so small a network finishes"
        tol = 1e-5 * (1 + abs(row["exact"]))
        for m in closed_form:
            assert row[f"{m}_lower"] <= row["lp_lower"] + tol  # LP got the tightest intermediate bounds
        assert row["lp_lower"] <= row["exact"] + tol
        assert row["exact"] <= row["pgd_margin"] + tol and row["exact"] <= row["apgd_margin"] + tol
        assert row["exact"] <= row["clean_margin"] + tol
        assert row["crown_lower"] <= row["alpha-crown_lower"] + tol
        assert row["chain"] == "ok"
        if row["exact"] > 0:
            assert row["milp_status"] == "certified"
        elif row["upper"] <= 0:
            assert all(row[f"{m}_status"] == "falsified" for m in comparison.methods)


def test_exact_minimum_from_the_candidate_classes_only(small, comparison):
    """exact="min" solves only the classes that can attain the minimum, and finds the same minimum."""
    model, X, y = small
    fast = compare(model, X, y, EPS, methods=("pgd", "crown", "lp", "milp"), attack_steps=30, progress=False)
    assert fast.ok and fast.settings["exact"] == "min"
    for a, b in zip(fast.rows, comparison.rows):
        assert a["exact"] == pytest.approx(b["exact"], abs=1e-5)
        assert a["milp_status"] == b["milp_status"]


def test_summary_accuracies_are_ordered(comparison):
    for s in comparison.summary:
        exact = s["exact_robust_accuracy"]
        assert exact is not None and s["undecided"] == 0
        assert s["clean_accuracy"] == pytest.approx(7 / 8)
        assert s["attack_accuracy"]["pgd"] >= exact and s["best_upper_accuracy"] == pytest.approx(exact)
        for m in ("ibp", "crown", "alpha-crown", "dual", "lp"):
            assert s["certified_accuracy"][m] <= exact
        assert set(s["seconds"]) == set(ALL)
    curves = comparison.curves()
    assert curves["eps"] == EPS and curves["exact"][0] >= curves["exact"][1]


def test_four_outputs_and_json_round_trip(comparison, tmp_path):
    pytest.importorskip("matplotlib")
    text = comparison.to_markdown()
    assert "exact robust acc." in text and "| ibp bound |" in text and "no violation" in text
    comparison.to_csv(tmp_path / "c.csv")
    header, *lines = (tmp_path / "c.csv").read_text().splitlines()
    assert len(lines) == 16 and "milp_lower" in header and "exact" in header.split(",")
    comparison.to_json(tmp_path / "c.json")
    back = Comparison.from_json(tmp_path / "c.json")
    assert back.to_json() == comparison.to_json()
    assert json.loads((tmp_path / "c.json").read_text())["meta"]["versions"]["torch"] == torch.__version__
    for a, b in zip(back.rows, comparison.rows):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == b[key] or (isinstance(a[key], float) and math.isnan(a[key]) and math.isnan(b[key]))
    fig = back.plot(tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG" and len(fig.axes) == 2


def test_a_violation_is_reported_loudly_never_fixed(small, monkeypatch):
    """An unsound 'ibp' (its bound raised by 10) must show up as a violation, a warning and a flag."""
    from robustopt.verify import ibp

    honest = ibp.bounds

    def inflated(*args, **kwargs):
        out = honest(*args, **kwargs)
        out.lower = out.lower + 10.0
        return out

    monkeypatch.setattr(ibp, "bounds", inflated)
    model, X, y = small
    with pytest.warns(BoundChainWarning, match="VIOLATED"):
        c = compare(model, X, y, 0.02, methods=("pgd", "ibp", "crown"), progress=False)
    assert not c.ok and not c.summary[0]["chain_ok"] and c.summary[0]["chain_violations"] == len(c.violations)
    assert {v["relation"] for v in c.violations} == {"ibp <= points"}
    assert all(v["excess"] > 9 for v in c.violations)
    assert c.summary[0]["certified_accuracy"]["ibp"] == 1.0  # the unsound numbers, as computed (even example 0)
    assert "BOUND CHAIN VIOLATED" in c.to_markdown() and "VIOLATED" in {r["chain"] for r in c.rows}


def test_a_timed_out_solver_never_certifies_in_compare():
    from robustopt.compare.core import _verdict
    lower, upper = np.array([1.0, 1.0, -1.0, -1.0]), np.array([2.0, 2.0, -0.5, 2.0])
    status = np.array(["optimal", "time_limit", "time_limit", "error"])
    assert _verdict(lower, upper, status).tolist() == ["certified", "time_limit", "falsified", "error"]


def test_one_time_limit_for_methods_with_and_without_one(small, monkeypatch):
    """As in certify: the time limit goes to the methods that take one (here the LP) and is ignored by the others,
    which give the same bounds as without it."""
    from robustopt.verify import lp

    model, X, y = small
    given = []
    original = lp.bounds
    monkeypatch.setattr(lp, "bounds", lambda *a, **kw: given.append(kw.get("time_limit")) or original(*a, **kw))
    kw = dict(methods=("ibp", "crown", "lp"), attack_steps=5, progress=False)
    limited = compare(model, X, y, 0.05, time_limit=60.0, **kw)
    plain = compare(model, X, y, 0.05, **kw)
    assert given and set(given[:len(given) // 2]) == {60.0} and set(given[len(given) // 2:]) == {None}
    assert limited.settings["time_limit"] == 60.0
    for a, b in zip(limited.rows, plain.rows):
        assert a["ibp_lower"] == b["ibp_lower"] and a["crown_lower"] == b["crown_lower"]
        assert a["lp_lower"] == b["lp_lower"]


def test_check_chain_relations():
    """LP below CROWN is a violation only when the LP used CROWN's intermediate bounds and solved optimally."""
    labels = torch.tensor([1])
    crown, lp = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 2.0]])
    upper = torch.full((1, 2), float("inf"))
    ok = np.array(["optimal"])
    found, checks = check_chain({"crown": crown, "lp": lp}, upper, {"crown": ok, "lp": ok}, labels, ["crown"])
    assert len(found) == 1 and found[0]["class"] == 0 and found[0]["relation"] == "crown <= lp" and checks == 6
    assert check_chain({"crown": crown, "lp": lp}, upper, {"crown": ok, "lp": ok}, labels, ["ibp"])[0] == []
    failed = np.array(["time_limit"])
    assert check_chain({"crown": crown, "lp": lp}, upper, {"crown": ok, "lp": failed}, labels, ["crown"])[0] == []
    # the class index skips the label: rows of label 0 are classes 1, 2
    found, _ = check_chain({"ibp": torch.tensor([[0.0, 3.0]])}, torch.tensor([[1.0, 1.0]]), {"ibp": ok},
                           torch.tensor([0]))
    assert [v["class"] for v in found] == [2]


def test_per_example_radii_and_other_norms(small):
    model, X, y = small
    eps = torch.linspace(0.0, 0.1, 8)
    c = compare(model, X, y, eps, methods=("pgd", "crown", "lp"), norm=1, progress=False)
    assert c.ok and [r["eps"] for r in c.rows] == pytest.approx(eps.tolist())
    assert c.rows[0]["crown_lower"] == pytest.approx(c.rows[0]["clean_margin"], abs=1e-6)  # eps = 0
    c2 = compare(model, X, y, 0.1, methods=("apgd", "ibp", "crown", "dual"), norm=2, progress=False)
    assert c2.ok and c2.attacks == ["apgd"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(methods=("pgd", "lp"), norm=2), "does not handle the l_2 ball"),
    (dict(methods=("pgd", "bogus")), "methods must be names"),
    (dict(eps=-0.1), "eps must be"),
    (dict(eps=[]), "non-empty list"),
    (dict(methods=("lp",), options={"lp": {"steps": 3}}), "unknown option"),
    (dict(methods=("lp",), options={"crown": {}}), "not among the bound methods"),
    (dict(attack_steps=0), "attack_steps"),
    (dict(time_limit=0), "time_limit"),
])
def test_bad_arguments(small, kwargs, match):
    model, X, y = small
    kwargs = {"eps": 0.05, **kwargs}
    with pytest.raises(ValueError, match=match):
        compare(model, X, y, progress=False, **kwargs)


def test_bad_data_and_missing_matplotlib(small, comparison, monkeypatch, tmp_path):
    model, X, y = small
    with pytest.raises(ValueError, match="y must have shape"):
        compare(model, X, y[:3], 0.05, progress=False)
    with pytest.raises(ValueError, match="out of range"):
        compare(model, X, y + 4, 0.05, progress=False)
    with pytest.raises(ValueError, match="not a robustopt comparison"):
        Comparison.from_json('{"rows": []}')
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    with pytest.raises(ImportError, match="pip install 'robustopt\\[plot\\]'"):
        comparison.plot(tmp_path / "x.png")
