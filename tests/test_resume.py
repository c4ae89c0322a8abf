"""Long runs that lose nothing: result files appended row by row, --resume after an interruption (same rows, each
once), failing rows recorded as errors while the run goes on, and clear errors for bad cluster / resume flags."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from robustopt import models
from robustopt.cli import main
from robustopt.verify import certify
from robustopt.verify.api import Problem
from robustopt.verify.journal import Journal
from robustopt.vnnlib.runner import run_csv
from vnn_helpers import digits_model, make_bench

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]


def _rows(path):
    """(header, rows) of a JSON-lines journal; a last line cut short (SIGKILL while writing) is not a row, as the
    journal itself reads it."""
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.endswith("\n")]
    return lines[0]["header"], lines[1:]


def _comparable(rows):
    return sorted((r["method"], r["example"], r["status"], tuple(r["margin_bounds"]), str(r["counterexample"]))
                  for r in rows)


class Interrupt:
    """Patches Journal.write to raise KeyboardInterrupt (Ctrl-C) after ``after`` rows."""

    def __init__(self, monkeypatch, after):
        self.count, original = 0, Journal.write

        def write(journal, row):
            if self.count == after:
                raise KeyboardInterrupt
            self.count += 1
            original(journal, row)

        monkeypatch.setattr(Journal, "write", write)


@pytest.mark.parametrize("method, batch_size", [("lp", 128), ("crown", 4)])
def test_certify_resume_after_ctrl_c_gives_the_same_rows_once(tmp_path, monkeypatch, method, batch_size):
    model, Xt, yt = digits_model()
    X, y, eps = Xt[:14], yt[:14], 0.05
    kw = dict(method=method, batch_size=batch_size, progress=False)
    whole = certify(model, X, y, eps, out=tmp_path / "whole.jsonl", **kw)
    with monkeypatch.context() as patch:
        Interrupt(patch, after=5)
        with pytest.raises(KeyboardInterrupt):
            certify(model, X, y, eps, out=tmp_path / "cut.jsonl", **kw)
    assert len(_rows(tmp_path / "cut.jsonl")[1]) == 5
    with pytest.raises(ValueError, match="resume"):  # never silently written twice
        certify(model, X, y, eps, out=tmp_path / "cut.jsonl", **kw)
    resumed = certify(model, X, y, eps, out=tmp_path / "cut.jsonl", resume=True, **kw)
    header, rows = _rows(tmp_path / "cut.jsonl")
    assert header == _rows(tmp_path / "whole.jsonl")[0]
    assert _comparable(rows) == _comparable(_rows(tmp_path / "whole.jsonl")[1])  # each example once, same values
    assert np.array_equal(resumed.status, whole.status) and torch.equal(resumed.margin_bounds, whole.margin_bounds)
    assert resumed.counts["certified"] > 0 and resumed.counts["falsified"] > 0


def test_resume_checks_the_run_and_drops_a_torn_last_line(tmp_path):
    model, Xt, yt = digits_model()
    out = tmp_path / "run.jsonl"
    first = certify(model, Xt[:6], yt[:6], 0.05, method="crown", out=out, progress=False)
    with open(out, "a") as f:
        f.write('{"method": "crown", "exam')  # a crash in the middle of a row
    again = certify(model, Xt[:6], yt[:6], 0.05, method="crown", out=out, resume=True, progress=False)
    assert np.array_equal(first.status, again.status) and out.read_text().endswith("}\n")
    assert len(_rows(out)[1]) == 6
    certify(model, Xt[:6], yt[:6], 0.05, method="ibp", out=out, progress=False)  # another method: same file
    assert sorted({r["method"] for r in _rows(out)[1]}) == ["crown", "ibp"] and len(_rows(out)[1]) == 12
    with pytest.raises(ValueError, match="different run.*fingerprint"):
        certify(model, Xt[:6], yt[:6], 0.06, method="crown", out=out, resume=True, progress=False)
    with pytest.raises(ValueError, match="resume=True needs out="):
        certify(model, Xt[:6], yt[:6], 0.05, resume=True, progress=False)


def test_a_failing_example_is_an_error_row_and_the_run_goes_on(tmp_path, monkeypatch):
    model, Xt, yt = digits_model()
    original = Problem.bounds

    def bounds(problem, C, method, idx, options, compute_upper=False, rows=None):
        if 3 in idx.tolist():
            raise RuntimeError("solver crashed on example 3")
        return original(problem, C, method, idx, options, compute_upper, rows)

    monkeypatch.setattr(Problem, "bounds", bounds)
    with pytest.warns(UserWarning, match="1 example.*error"):
        res = certify(model, Xt[:8], yt[:8], 0.01, method="lp", attack=False, out=tmp_path / "r.jsonl",
                      progress=False)
    assert res.status[3] == "error" and res.errors == {3: "RuntimeError: solver crashed on example 3"}
    assert (np.delete(res.status, 3) != "error").all() and res.counts["error"] == 1
    row = [r for r in _rows(tmp_path / "r.jsonl")[1] if r["example"] == 3][0]
    assert row["status"] == "error" and "solver crashed" in row["message"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = make_bench(tmp_path_factory.mktemp("vnn"))
    (root / "specs/broken.vnnlib").write_text("(declare-const X_0 Real)\n(assert (<= X_0")  # malformed
    with open(root / "instances.csv", "a", newline="") as f:
        csv.writer(f).writerow(("digits.onnx", "specs/broken.vnnlib", 30))
    return root


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_vnncomp_malformed_file_fails_its_row_only_and_resume(bench, tmp_path, monkeypatch):
    whole = run_csv(bench / "instances.csv", out=tmp_path / "whole.csv", progress=False)
    broken = whole[-1]
    assert broken["result"] == "error" and "broken.vnnlib, line 2: unclosed" in broken["message"]
    assert {r["result"] for r in whole[:-1]} == {"sat", "unsat"}
    with monkeypatch.context() as patch:
        Interrupt(patch, after=2)
        with pytest.raises(KeyboardInterrupt):
            run_csv(bench / "instances.csv", out=tmp_path / "cut.csv", progress=False)
    assert len(_csv_rows(tmp_path / "cut.csv")) == 2
    resumed = run_csv(bench / "instances.csv", out=tmp_path / "cut.csv", resume=True, progress=False)
    assert [r["result"] for r in resumed] == [r["result"] for r in whole]
    key = lambda rows: sorted((r["onnx"], r["vnnlib"], r["result"], r["message"]) for r in rows)
    assert key(_csv_rows(tmp_path / "cut.csv")) == key(_csv_rows(tmp_path / "whole.csv"))  # each row once


@pytest.mark.parametrize("stop, code", [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, 130)],
                         ids=["SIGKILL", "SIGTERM"])
def test_cli_certify_killed_then_resumed(tmp_path, stop, code):
    """SIGKILL / SIGTERM in the middle of `robustopt certify --out`, then --resume: the rows of an uninterrupted
    run (SIGTERM ends the command like Ctrl-C, exit code 130)."""
    model, _, _ = digits_model()
    models.save(model, tmp_path / "net.pt")
    args = [sys.executable, "-m", "robustopt", "certify", str(tmp_path / "net.pt"), "--method", "milp", "--eps",
            "0.1", "--n", "40", "--threads", "1"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = tmp_path / "cut.jsonl"
    log = open(tmp_path / "stderr.txt", "w+")
    proc = subprocess.Popen([*args, "--out", str(out)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 4:  # the header and 3 rows
            proc.send_signal(stop)
            break
        time.sleep(0.01)
    proc.wait()
    log.seek(0)
    assert proc.returncode == code, f"exit code {proc.returncode}; stderr: {log.read()[-2000:]}"
    log.close()
    cut = len(_rows(out)[1])
    assert 3 <= cut < 40
    done = subprocess.run([*args, "--out", str(out), "--resume", "--json"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    whole = certify(model, digits_model()[1][:40], digits_model()[2][:40], 0.1, method="milp", progress=False,
                    out=tmp_path / "whole.jsonl")
    assert _comparable(_rows(out)[1]) == _comparable(_rows(tmp_path / "whole.jsonl")[1])
    printed = done.stdout[done.stdout.index("\n{") + 1:] if not done.stdout.startswith("{") else done.stdout
    assert json.loads(printed)["methods"]["milp"]["status"] == whole.status.tolist()  # (HiGHS may print a banner)


@pytest.mark.parametrize("flags, message", [
    (["--resume"], "--resume needs --out"),
    (["--scheduler", "localhost"], "--scheduler must be tcp://HOST:PORT"),
    (["--scheduler", "local:0"], "--scheduler must be tcp://HOST:PORT"),
    (["--scheduler", "local:2", "--jobs", "2"], "not both"),
    (["--jobs", "0"], "--jobs must be >= 1"),
])
def test_cli_cluster_flags_are_checked(tmp_path, capsys, flags, message):
    model, _, _ = digits_model()
    models.save(model, tmp_path / "net.pt")
    assert main(["certify", str(tmp_path / "net.pt"), "--n", "2", *flags]) == 1
    assert message in capsys.readouterr().err


def test_missing_dask_names_the_extra(monkeypatch):
    model, Xt, yt = digits_model()
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"robustopt\[cluster\]"):
        certify(model, Xt[:2], yt[:2], 0.01, client=object(), progress=False)
