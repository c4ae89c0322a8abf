"""robustopt.vnnlib: parsing VNNLIB (as VNN-COMP writes it and malformed), the Property helpers, writing
properties and VNN-COMP result files, and the real 2021 MNIST specs against the MNIST images they came from."""
import csv
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from robustopt import vnnlib

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

SMALL = """
; two inputs, three outputs
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
(assert (<= X_0 0.5))
(assert (>= X_0 (- 0.25)))   ; a negative constant, SMT-LIB style
(assert (and (>= 1 X_1) (<= -1.5e-1 X_1)))
(assert (or
    (and (>= Y_1 Y_0))
    (and (<= (+ Y_2 (* 2 Y_0) (- 1)) (* 0.5 Y_1)) (>= (- Y_2 Y_1) 0.0))
))
"""


def test_parse_box_and_output_condition():
    prop = vnnlib.parse(SMALL)
    np.testing.assert_array_equal(prop.lower, [-0.25, -0.15])
    np.testing.assert_array_equal(prop.upper, [0.5, 1.0])
    assert prop.num_inputs == 2 and prop.num_outputs == 3 and len(prop.disjuncts) == 2
    A, b = prop.disjuncts[1]  # Y_2 + 2 Y_0 - 1 <= 0.5 Y_1  and  Y_2 - Y_1 >= 0
    np.testing.assert_array_equal(A, [[2.0, -0.5, 1.0], [0.0, 1.0, -1.0]])
    np.testing.assert_array_equal(b, [1.0, 0.0])
    Y = np.array([[1.0, 1.0, 5.0],    # tie Y_1 = Y_0: satisfies the first disjunct (>= includes equality)
                  [1.0, 0.5, 5.0],    # neither
                  [0.0, -1.0, -0.5],  # second: -0.5 - 1 <= -0.5 and -0.5 + 1 >= 0
                  [0.0, -1.0, 1.0]])  # second fails its first row: 1 - 1 <= -0.5 is false
    np.testing.assert_array_equal(prop.satisfies_output(Y), [True, False, True, False])
    assert prop.satisfies_output(torch.tensor([2.0, 2.0, 0.0]))[0]
    np.testing.assert_array_equal(prop.contains([[0.5, -0.15], [0.5000001, 0.0]]), [True, False])
    assert prop.robustness() is None
    with pytest.raises(ValueError, match="not a local-robustness property"):
        prop.spec_matrix()
    C, d, which = prop.spec_rows()
    assert C.shape == (3, 3) and which.tolist() == [0, 1, 1] and d.tolist() == [0.0, 1.0, 0.0]


def test_equality_chains_and_division():
    text = ("(declare-const X_0 Real)(declare-const Y_0 Real)(declare-const Y_1 Real)"
            "(assert (<= X_0 1))(assert (>= X_0 0))(assert (= (/ Y_0 4) Y_1))(assert (<= 0 Y_0 2))")
    prop = vnnlib.parse(text)
    assert len(prop.disjuncts) == 1  # four rows in one conjunction: two for =, two for the chain 0 <= Y_0 <= 2
    np.testing.assert_array_equal(prop.satisfies_output([[2.0, 0.5], [2.0, 0.6], [3.0, 0.75]]), [True, False, False])


@pytest.mark.parametrize("text, message", [
    ("(declare-const X_0 Real)\n(assert (<= X_0 1)", r"line 2: unclosed"),
    ("(declare-const X_0 Real))", r"line 1: unbalanced"),
    ("(declare-const X_0 Real)\nX_0", r"line 2: unexpected 'X_0'"),
    ("(declare-const X_0 Real)\n(declare-const X_0 Real)", r"line 2: X_0 is declared twice"),
    ("(declare-const X_0 Int)", r"declare-const X_i Real"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_1 1))", r"line 3: X_1 is used but not declared"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n\n(assert (< Y_0 1))", r"line 4: strict inequality"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 Y_0))", r"line 3: .*mixing"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (or (<= X_0 1) (>= X_0 0)))(assert (<= Y_0 1))",
     r"every input needs a lower and an upper bound; missing for X_0"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)"
     "(assert (or (and (<= X_0 1) (>= X_0 0) (<= Y_0 1)) (and (<= X_0 3) (>= X_0 2))))",
     r"no assertion on the outputs Y_j for one of the input boxes"),
    ("(declare-const X_0 Real)\n(assert (<= (* 2 X_0) 1))", r"line 2: .*bounds on single variables"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= (* Y_0 Y_0) 1))", r"line 3: unsupported term"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= Y_0 foo))", r"line 3: unknown symbol 'foo'"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (not (<= Y_0 1)))", r"line 3: unsupported Boolean"),
    ("(declare-const X_0 Real)\n(push 1)", r"line 2: unsupported command 'push'"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 1))(assert (<= Y_0 1))",
     r"every input needs a lower and an upper bound; missing for X_0"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 0))(assert (>= X_0 1))(assert (<= Y_0 1))",
     r"empty input box"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 1))(assert (>= X_0 0))", r"no assertion on"),
    ("(declare-const X_1 Real)(declare-const Y_0 Real)", r"X_0 \.\. X_\{m-1\}"),
])
def test_malformed_text_raises_with_the_line(text, message):
    with pytest.raises(ValueError, match=message):
        vnnlib.parse(text, source="prop.vnnlib")


def test_files_gzip_and_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.vnnlib"):
        vnnlib.load(tmp_path / "missing.vnnlib")
    path = tmp_path / "small.vnnlib.gz"
    with gzip.open(path, "wt") as f:
        f.write(SMALL)
    prop = vnnlib.load(path)
    assert prop.source == str(path) and prop.num_outputs == 3
    (tmp_path / "broken.vnnlib.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="cannot read"):
        vnnlib.load(tmp_path / "broken.vnnlib.gz")


def test_local_robustness_round_trip_and_helpers(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(1, 4, 4)).astype(np.float32)
    x[0, 0, 0], x[0, 0, 1] = 0.0, 1.0
    prop = vnnlib.local_robustness(x, label=3, eps=0.1, num_classes=5)
    assert prop.lower[0] == 0.0 and prop.upper[1] == 1.0  # clipped to [0, 1]
    assert prop.robustness() == (3, (0, 1, 2, 4))
    C = prop.spec_matrix()
    assert C.shape == (4, 5) and (C[:, 3] == 1).all() and C[1].tolist() == [0, -1, 0, 1, 0]
    for suffix in (".vnnlib", ".vnnlib.gz"):
        vnnlib.save(prop, tmp_path / f"p{suffix}")
        again = vnnlib.load(tmp_path / f"p{suffix}")
        np.testing.assert_array_equal(again.lower, prop.lower)  # exact: shortest round-trip decimals
        np.testing.assert_array_equal(again.upper, prop.upper)
        assert again.robustness() == prop.robustness()
    general = vnnlib.parse(vnnlib.to_vnnlib(vnnlib.parse(SMALL)))
    for (A, b), (A2, b2) in zip(vnnlib.parse(SMALL).disjuncts, general.disjuncts):
        np.testing.assert_array_equal(A, A2)
        np.testing.assert_array_equal(b, b2)
    lower, upper = prop.input_box((1, 4, 4))
    assert lower.shape == (1, 4, 4) and lower.dtype == torch.float64
    center, eps, lo, hi = prop.ball((1, 4, 4))
    assert center.shape == lo.shape == (1, 1, 4, 4)
    assert ((center - eps <= lo) & (center + eps >= hi)).all()  # the ball covers the box
    assert eps <= 0.1 + 1e-12
    with pytest.raises(ValueError, match="does not hold"):
        prop.input_box((3, 4))
    with pytest.raises(ValueError, match="targets"):
        vnnlib.local_robustness(x, 3, 0.1, 5, targets=[3])
    with pytest.raises(ValueError, match="label"):
        vnnlib.local_robustness(x, 5, 0.1, 5)
    with pytest.raises(ValueError, match="eps"):
        vnnlib.local_robustness(x, 1, -0.1, 5)
    with pytest.raises(ValueError, match="disjuncts must be"):
        vnnlib.Property([0.0], [1.0], ((np.ones((1, 3)), np.zeros(1)),), num_outputs=2)
    with pytest.raises(ValueError, match="lower <= upper"):
        vnnlib.Property([1.0], [0.0], ((np.ones((1, 2)), np.zeros(1)),), num_outputs=2)


def test_check_witness_replays_in_float64_and_counts_ties():
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2))
    with torch.no_grad():  # y = (x_0, x_1): label 0 is beaten or tied where x_1 >= x_0
        model[1].weight.copy_(torch.eye(2))
        model[1].bias.zero_()
    prop = vnnlib.local_robustness(np.array([0.6, 0.4]), label=0, eps=0.1, num_classes=2)
    ok, y = prop.check_witness(model, torch.tensor([0.5, 0.5]))
    assert ok and y.tolist() == [0.5, 0.5]  # a tie is a counterexample
    assert not prop.check_witness(model, [0.55, 0.45])[0]
    assert not prop.check_witness(model, [0.45, 0.5])[0]  # output satisfies, but outside the box (x_0 >= 0.5)
    assert model[1].weight.dtype == torch.float32  # the model itself is untouched
    with pytest.raises(ValueError, match="2 entries"):
        prop.check_witness(model, [0.5, 0.5, 0.5])


def test_result_files(tmp_path):
    path = tmp_path / "out.txt"
    x, y = np.array([0.1, 1e-5, 0.25]), torch.tensor([1.5, -2.0], dtype=torch.float64)
    vnnlib.write_result(path, "sat", x, y)
    text = path.read_text()
    assert text.splitlines()[0] == "sat" and "(X_1 0.00001)" in text and text.rstrip().endswith("(Y_1 -2.0))")
    result, x2, y2 = vnnlib.read_result(path)
    assert result == "sat"
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y.numpy())
    for result in ("unsat", "timeout", "unknown"):
        vnnlib.write_result(path, result)
        assert path.read_text() == result + "\n" and vnnlib.read_result(path) == (result, None, None)
    path.write_text("holds\n")
    assert vnnlib.read_result(path)[0] == "unsat"
    with pytest.raises(ValueError, match="needs the witness"):
        vnnlib.format_result("sat", x)
    with pytest.raises(ValueError, match="one of"):
        vnnlib.format_result("safe")
    with pytest.raises(ValueError, match="finite"):
        vnnlib.format_result("sat", [np.nan], [0.0])
    path.write_text("sat\n((X_0 0.5)\n (Y_0 oops))\n")
    with pytest.raises(ValueError, match="line 3"):
        vnnlib.read_result(path)


# ------------------------------------------------------------------------------------------ the real specs
def _spec_rows():
    index = SHARED / "vnn_specs_mnist_index.csv"
    if not index.is_file() or not (SHARED / "mnist").is_dir():
        pytest.skip("../shared/data is not available")
    folders = {"vnncomp2021_mnistfc": SHARED / "vnncomp2021_mnistfc",
               "vnncomp2021_eran": SHARED / "vnncomp2021_eran_mnist_relu_9_200" / "specs" / "mnist"}
    rows = [r for r in csv.DictReader(index.open()) if r["benchmark"] in folders]
    return [(folders[r["benchmark"]] / r["vnnlib"], r) for r in rows]


def test_vnncomp_2021_specs_match_their_mnist_images():
    from robustopt.data import load_mnist
    X, _ = load_mnist(root=SHARED / "mnist", split="test")
    seen = {}
    for path, row in _spec_rows():
        if path not in seen:
            seen[path] = vnnlib.load(path)
        prop = seen[path]
        assert prop.num_inputs == 784 and prop.num_outputs == 10
        label, targets = prop.robustness()
        assert label == int(row["spec_label"]) == int(row["mnist_label"])
        assert list(targets) == [int(t) for t in row["adversarial_targets"].split(";")]
        x, eps = X[int(row["mnist_test_index"])].astype(np.float64), float(row["eps_from_box"])
        # the box is [max(0, x - eps), min(1, x + eps)] around the image, up to float32 rounding
        np.testing.assert_allclose(prop.lower, np.maximum(x - eps, 0.0), rtol=0, atol=1e-7)
        np.testing.assert_allclose(prop.upper, np.minimum(x + eps, 1.0), rtol=0, atol=1e-7)
    assert len(seen) == 30 + 36


UNION = """
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(assert (<= X_1 1))
(assert (>= X_1 0))
(assert (or (and (>= X_0 0) (<= X_0 1)) (and (>= X_0 2) (<= X_0 3) (<= Y_1 -5))))
(assert (or (<= Y_0 Y_1) (>= Y_0 10)))
"""


def test_or_over_inputs_reads_as_a_union_of_boxes(tmp_path):
    """An ``or`` over input bounds (ACAS Xu's property 6), with a condition per box: one part per box, each with
    the output condition that goes with it; written back and read again exactly."""
    union = vnnlib.parse(UNION)
    assert isinstance(union, vnnlib.PropertyUnion) and len(union.parts) == 2
    first, second = union.parts
    np.testing.assert_array_equal(first.lower, [0, 0])
    np.testing.assert_array_equal(second.upper, [3, 1])
    assert len(first.disjuncts) == 2 and [len(b) for _, b in second.disjuncts] == [2, 2]  # (Y_1 <= -5) and each
    assert first.satisfies_output([[0.0, 1.0], [10.0, 0.0], [1.0, 0.0]]).tolist() == [True, True, False]
    assert second.satisfies_output([[0.0, 1.0], [10.0, -6.0]]).tolist() == [False, True]
    assert union.contains([[0.5, 0.5], [2.5, 0.5], [1.5, 0.5]]).tolist() == [True, True, False]
    again = vnnlib.parse(vnnlib.to_vnnlib(union))
    for a, b in zip(union.parts, again.parts):
        np.testing.assert_array_equal(a.lower, b.lower)
        np.testing.assert_array_equal(a.upper, b.upper)
        for (A1, b1), (A2, b2) in zip(a.disjuncts, b.disjuncts):
            np.testing.assert_array_equal(A1, A2)
            np.testing.assert_array_equal(b1, b2)
    model = nn.Sequential(nn.Linear(2, 2)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[-10.0, 0.0], [0.0, -10.0]]))
        model[0].bias.zero_()
    assert union.check_witness(model, [0.5, 0.5])[0]  # y = (-5, -5): box 1, Y_0 <= Y_1 (a tie counts)
    assert union.check_witness(model, [2.5, 0.9])[0]  # y = (-25, -9): box 2, Y_1 <= -5 and Y_0 <= Y_1
    assert not union.check_witness(model, [2.5, 0.1])[0]  # y = (-25, -1): box 2 wants Y_1 <= -5 too
    assert not union.check_witness(model, [1.5, 0.9])[0]  # in no box
    same_box = vnnlib.parse(UNION.replace("(>= X_0 2) (<= X_0 3)", "(>= X_0 0) (<= X_0 1)"))
    assert isinstance(same_box, vnnlib.Property) and len(same_box.disjuncts) == 4  # one box, both conditions
    path = SHARED / "vnncomp2021_acasxu" / "prop_6.vnnlib"
    if path.exists():
        prop6 = vnnlib.load(path)
        assert isinstance(prop6, vnnlib.PropertyUnion) and [len(p.disjuncts) for p in prop6.parts] == [4, 4]
        assert prop6.parts[0].lower[1] == 0.11140846 and prop6.parts[1].upper[1] == -0.11140846
