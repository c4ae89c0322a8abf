"""The VNN-COMP runner and CLI: result files, instances CSVs, n_jobs, bad input, and the real 2021 mnistfc
instances with known verdicts (skipped when ../shared/data is absent)."""
import csv
import os

import numpy as np
import pytest

from robustopt.cli import main
from robustopt.onnx import load as load_onnx
from robustopt.vnnlib import load, read_result, verify_property
from robustopt.vnnlib.runner import read_instances, run_csv, run_instance
from vnn_helpers import BENCH_CASES, SHARED_DATA, make_bench

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = BENCH_CASES


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A folder with the digits network as ONNX, four local-robustness properties and an instances CSV."""
    return make_bench(tmp_path_factory.mktemp("vnn"))


def test_vnnlib_command_writes_result_files(bench, capsys):
    net = load_onnx(bench / "digits.onnx")
    seen = set()
    for i, eps in CASES:
        spec = bench / f"specs/prop_{i}_{eps}.vnnlib"
        out = bench / f"result_{i}_{eps}.txt"
        assert main(["vnnlib", str(bench / "digits.onnx"), str(spec), "--timeout", "30", "--out", str(out)]) == 0
        assert capsys.readouterr().out.split()[0] in ("sat", "unsat")
        text = out.read_text()
        result, x, y = read_result(out)
        expected = verify_property(net, load(spec), time_limit=30)["result"]
        assert result == expected
        seen.add(result)
        if result == "sat":
            assert text.startswith("sat\n((X_0 ")
            ok, replayed = load(spec).check_witness(net, x)
            assert ok and np.allclose(replayed, y, rtol=0, atol=1e-12)
        else:
            assert text == f"{result}\n"
    assert seen == {"sat", "unsat"}


def test_vnncomp_command_and_runner(bench, capsys, tmp_path):
    out = tmp_path / "results.csv"
    assert main(["vnncomp", str(bench / "instances.csv"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["onnx", "vnnlib", "result", "seconds", "message"]
    assert [r[:2] for r in rows[1:]] == [["digits.onnx", f"specs/prop_{i}_{eps}.vnnlib"] for i, eps in CASES]
    direct = [run_instance(bench / "digits.onnx", bench / f"specs/prop_{i}_{eps}.vnnlib", 30)["result"]
              for i, eps in CASES]
    assert [r[2] for r in rows[1:]] == direct
    assert all(float(r[3]) >= 0 for r in rows[1:])
    assert f"{direct.count('sat')} sat, {direct.count('unsat')} unsat" in printed
    # --root: the same CSV read from elsewhere
    moved = tmp_path / "instances.csv"
    moved.write_text((bench / "instances.csv").read_text())
    assert [r["result"] for r in run_csv(moved, root=bench, progress=False)] == direct


def test_runner_n_jobs_gives_the_same_results(bench):
    one = run_csv(bench / "instances.csv", n_jobs=1, progress=False)
    two = run_csv(bench / "instances.csv", n_jobs=2, progress=False)
    assert [r["result"] for r in one] == [r["result"] for r in two]
    for a, b in zip(one, two):
        if a["result"] == "sat":
            np.testing.assert_array_equal(a["counterexample"]["x"], b["counterexample"]["x"])


def test_bad_instances(bench, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("digits.onnx,specs/missing.vnnlib,30\n")
    with pytest.raises(FileNotFoundError, match="missing.vnnlib"):
        read_instances(bad, root=bench)
    bad.write_text("digits.onnx,specs/prop_0_0.01.vnnlib\n")
    with pytest.raises(ValueError, match="3 fields"):
        read_instances(bad, root=bench)
    bad.write_text("digits.onnx,specs/prop_0_0.01.vnnlib,soon\n")
    with pytest.raises(ValueError, match="timeout"):
        read_instances(bad, root=bench)
    header = tmp_path / "header.csv"
    header.write_text("onnx,vnnlib,timeout\n\ndigits.onnx,specs/prop_0_0.01.vnnlib,5\n")
    (inst,) = read_instances(header, root=bench)
    assert inst.timeout == 5.0 and inst.onnx_path == os.path.normpath(bench / "digits.onnx")
    assert main(["vnncomp", str(bad), "--root", str(bench)]) == 1
    assert "timeout" in capsys.readouterr().err
    assert main(["vnnlib", str(bench / "nope.onnx"), str(bench / "specs/prop_0_0.01.vnnlib")]) == 1
    assert "does not exist" in capsys.readouterr().err


MNISTFC = os.path.join(SHARED_DATA, "vnncomp2021_mnistfc")
VERDICTS = os.path.join(SHARED_DATA, "vnncomp2021_results", "verdicts_mnistfc_2021.csv")
# easy instances of all kinds: proven by CROWN, by the MILP in seconds, and violated (found by the attack)
EASY = ["mnist-net_256x2-prop_2_0.03", "mnist-net_256x2-prop_11_0.05", "mnist-net_256x2-prop_10_0.05",
        "mnist-net_256x2-prop_7_0.03", "mnist-net_256x2-prop_1_0.05", "mnist-net_256x4-prop_7_0.05"]


@pytest.mark.skipif(not os.path.isfile(VERDICTS), reason="../shared/data (VNN-COMP 2021 mnistfc) is not available")
def test_real_mnistfc_instances_agree_with_known_verdicts():
    pytest.importorskip("onnx")
    with open(VERDICTS, newline="") as f:
        known = {row["instance"]: row["consensus"] for row in csv.DictReader(f)}
    decided = 0
    for name in EASY:
        net, prop = name.split("-prop")
        report = run_instance(os.path.join(MNISTFC, f"{net}.onnx"), os.path.join(MNISTFC, f"prop{prop}.vnnlib"),
                              timeout=20)
        assert known[name] in ("sat", "unsat")
        assert report["result"] in (known[name], "timeout", "unknown"), name  # never a wrong verdict
        decided += report["result"] == known[name]
    assert decided >= len(EASY) - 1
