"""The robustopt command: subprocess runs of demo / certify / compare, and one-line errors for bad input."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robustopt import models
from robustopt.cli import main
from robustopt.data import load_digits

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "data" / "mnist"
MNIST_NET = REPO.parent / "shared" / "data" / "vnncomp2021_mnistfc" / "mnist-net_256x2.onnx"


def robustopt(*args, timeout=300):
    """Run ``python -m robustopt ARGS`` from the repository (1 thread) and return the completed process."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "robustopt", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=timeout)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A 64-16-10 network fitted for a few epochs on the digits, saved with robustopt.models.save."""
    torch.manual_seed(0)
    X, y = load_digits()
    model = models.mlp(64, (16,), 10)
    models.fit(model, X, y, epochs=8, lr=1e-2, progress=False, device="cpu")
    path = tmp_path_factory.mktemp("cli") / "mlp.pt"
    models.save(model, path)
    return path


def one_line_error(result):
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_demo_quick_in_a_subprocess(tmp_path):
    result = robustopt("demo", "--quick", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "standard logistic" in out and "robust logistic" in out and "IBP-trained" in out
    assert "exact (MILP)" in out and "no violation" in out
    for name in ("standard.pt", "ibp.pt", "ibp_comparison.json", "standard_comparison.csv", "linear.json"):
        assert (tmp_path / name).is_file()
    assert models.load(tmp_path / "ibp.pt")(torch.zeros(1, 64)).shape == (1, 10)


def test_certify_and_compare_on_a_saved_model(model_file, tmp_path):
    result = robustopt("certify", model_file, "--eps", "0.02", "--n", "20", "--method", "ibp,crown", "--json",
                       "--threads", "1", "--seed", "7")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["n"] == 20 and set(doc["methods"]) == {"ibp", "crown"}
    ibp, crown = doc["methods"]["ibp"], doc["methods"]["crown"]
    assert ibp["certified"] + ibp["falsified"] + ibp["unknown"] == 20 and crown["falsified"] == ibp["falsified"]
    assert doc["meta"]["seed"] == 7 and doc["meta"]["threads"] == 1
    assert doc["meta"]["versions"]["torch"] == torch.__version__ and doc["meta"]["versions"]["robustopt"]

    result = robustopt("compare", model_file, "--eps", "0.01", "0.03", "--n", "4", "--methods", "pgd,ibp,crown,lp,milp",
                       "--attack-steps", "20", "--threads", "1", "--out", f"{tmp_path / 'cmp'}/")
    assert result.returncode == 0, result.stderr
    assert "no violation" in result.stdout and "exact robust acc." in result.stdout
    from robustopt.compare import Comparison

    c = Comparison.from_json(tmp_path / "cmp" / "comparison.json")
    assert c.ok and c.eps == [0.01, 0.03] and c.methods == ["ibp", "crown", "lp", "milp"]
    assert c.meta["command"][:2] == ["robustopt", "compare"] and c.meta["threads"] >= 1
    plotted = importlib.util.find_spec("matplotlib") is not None  # the PNG needs the plot extra
    for suffix in ("md", "csv", "png") if plotted else ("md", "csv"):
        assert (tmp_path / "cmp" / f"comparison.{suffix}").stat().st_size > 0


def test_bad_path_in_a_subprocess_is_one_line():
    line = one_line_error(robustopt("certify", "/nonexistent/model.pt"))
    assert line == "robustopt certify: error: model file '/nonexistent/model.pt' does not exist"


@pytest.mark.parametrize("argv, code, message", [
    (["certify"], 2, "the following arguments are required: MODEL"),
    (["certify", "{model}", "--eps", "-1"], 2, "eps must be a finite number >= 0"),
    (["certify", "{model}", "--norm", "3"], 2, "norm must be one of"),
    (["certify", "{model}", "--method", "ibp,nope"], 1, "unknown method 'nope'"),
    (["compare", "{model}", "--methods", "lp", "--norm", "2"], 1, "does not handle the l_2 ball"),
    (["attack", "{model}", "--data", "{tmp}/missing.npz"], 1, "does not exist"),
    (["attack", "{model}", "--data", "{tmp}/bad.npz"], 1, "needs arrays X and y"),
    (["attack", "{model}", "--data", "{tmp}/wide.npz"], 1, "does not accept the data's inputs"),
    (["attack", "{tmp}/unsupported.pt"], 1, "layer type 'LSTM' is not supported"),
    (["attack", "{tmp}/pickled.pt"], 1, "is not a robustopt model file"),
    (["certify", "{tmp}/net.onnx"], 1, "not a readable ONNX model"),
    (["certify", "{model}", "--data", "mnist", "--root", "{tmp}"], 1, "mnist test files not found"),
    (["train", "--arch", "lstm"], 1, "--arch must be mlp:W1,W2"),
    (["linear", "--classes", "3"], 1, "--classes must be two distinct labels"),
    (["demo", "--bogus"], 2, "unrecognized arguments: --bogus"),
    (["nosuchcommand"], 2, "invalid choice: 'nosuchcommand'"),
])
def test_bad_input_gives_one_line_and_a_nonzero_code(argv, code, message, model_file, tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", inputs=np.zeros((2, 64)))
    np.savez(tmp_path / "wide.npz", X=np.zeros((2, 65), dtype=np.float32), y=np.zeros(2, dtype=np.int64))
    torch.save({"format": "robustopt-model", "version": 1, "dtype": "float32", "state_dict": {},
                "layers": [{"type": "LSTM"}]}, tmp_path / "unsupported.pt")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "pickled.pt")
    (tmp_path / "net.onnx").write_bytes(b"not an onnx file")
    if "onnx" in " ".join(argv):
        pytest.importorskip("onnx")
    argv = [a.format(model=model_file, tmp=tmp_path) for a in argv]
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse
        status = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert status == code and len(err) == 1 and message in err[0], err
    assert err[0].startswith("robustopt")


def test_train_attack_linear_in_process(tmp_path, capsys):
    path = tmp_path / "m.pt"
    assert main(["train", "--arch", "mlp:8", "--epochs", "1", "--method", "fgsm", "--eps", "0.05", "--eval-n", "30",
                 "--out", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model"] == str(path) and doc["evaluation"]["n"] == 30 and set(doc["evaluation"]["certified_accuracy"]) \
        == {"ibp", "crown"}
    assert main(["attack", str(path), "--eps", "0.05", "--n", "40", "--steps", "5", "--out", str(tmp_path / "a.npz")]) == 0
    assert "robust accuracy" in capsys.readouterr().out
    saved = np.load(tmp_path / "a.npz")
    assert saved["margin"].shape == (40,) and np.all(saved["margin"] <= saved["clean_margin"] + 1e-6)
    assert main(["linear", "--eps", "0.2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["model"] for r in rows] == ["standard logistic", "robust logistic"]
    assert rows[1]["robust_error"] < rows[0]["robust_error"]


@pytest.mark.skipif(not (MNIST.is_dir() and MNIST_NET.is_file()), reason="../shared/data is absent")
def test_onnx_network_on_mnist(capsys):
    pytest.importorskip("onnx")
    assert main(["certify", str(MNIST_NET), "--data", "mnist", "--root", str(MNIST), "--n", "5", "--eps", "0.01",
                 "--method", "crown", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n"] == 5 and doc["methods"]["crown"]["certified"] + doc["methods"]["crown"]["falsified"] \
        + doc["methods"]["crown"]["unknown"] == 5
