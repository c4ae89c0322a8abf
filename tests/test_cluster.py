"""certify / compare / the VNN-COMP runner on a Dask LocalCluster of two worker processes: the results equal the
serial run's, and a worker killed mid-run loses nothing (its tasks run again elsewhere). Skipped without the
cluster extra (dask[distributed])."""
import csv
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("distributed")

import robustopt  # noqa: E402
from robustopt.cli import main  # noqa: E402
from robustopt.compare import compare  # noqa: E402
from robustopt.verify import certify  # noqa: E402
from robustopt.verify.parallel import TaskError, local_client, run_tasks  # noqa: E402
from robustopt.vnnlib.runner import run_csv  # noqa: E402
from vnn_helpers import BENCH_CASES, assert_same_certificates, digits_model, make_bench  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def client():
    client = local_client(2)
    yield client
    cluster = client.cluster
    client.close()
    cluster.close()


def test_workers_import_this_robustopt(client):
    assert set(client.run(lambda: __import__("robustopt").__file__).values()) == {robustopt.__file__}


@pytest.mark.parametrize("method, eps, batch_size", [("milp", 0.08, 128), ("lp", 0.05, 128), ("crown", 0.05, 5)])
def test_cluster_equals_serial(client, method, eps, batch_size):
    model, Xt, yt = digits_model()
    X, y = Xt[:12], yt[:12]
    serial = certify(model, X, y, eps, method=method, batch_size=batch_size, progress=False)
    on_cluster = certify(model, X, y, eps, method=method, batch_size=batch_size, client=client, progress=False)
    assert_same_certificates(serial, on_cluster)
    assert serial.counts["certified"] > 0 and serial.counts["falsified"] > 0 and serial.counts["error"] == 0


def test_client_is_checked(client):
    model, Xt, yt = digits_model()
    with pytest.raises(ValueError, match=r"give n_jobs \(local processes\) or client \(a Dask cluster\), not both"):
        certify(model, Xt[:2], yt[:2], 0.01, client=client, n_jobs=2, progress=False)
    with pytest.raises(ValueError, match="client must be a dask.distributed.Client; got str"):
        certify(model, Xt[:2], yt[:2], 0.01, client="tcp://127.0.0.1:8786", progress=False)


def _kill_a_busy_worker(client, killed, prefix):
    """Kill (SIGKILL) the process of the first worker seen running a task whose key starts with ``prefix``."""
    pids = client.run(os.getpid)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not killed:
        for worker, keys in client.processing().items():
            if any(str(k).startswith(prefix) for k in keys):
                os.kill(pids[worker], signal.SIGKILL)
                killed.append(worker)
                return
        time.sleep(0.002)


def _fails_on_three(shared, t):
    if t == 3:
        raise RuntimeError("task three is broken")
    return t


def test_a_failing_task_is_an_error_not_the_end(client):
    outcomes = dict(run_tasks(_fails_on_three, None, range(6), client=client))
    assert isinstance(outcomes[3], TaskError) and outcomes[3].message == "RuntimeError: task three is broken"
    assert {t: v for t, v in outcomes.items() if t != 3} == {0: 0, 1: 1, 2: 2, 4: 4, 5: 5}


def test_vnncomp_runner_on_the_cluster(client, tmp_path):
    bench = make_bench(tmp_path)
    serial = run_csv(bench / "instances.csv", progress=False)
    on_cluster = run_csv(bench / "instances.csv", progress=False, client=client)
    assert [r["result"] for r in serial] == [r["result"] for r in on_cluster]
    assert {r["result"] for r in serial} == {"sat", "unsat"}
    for a, b in zip(serial, on_cluster):
        if a["result"] == "sat":
            np.testing.assert_array_equal(a["counterexample"]["x"], b["counterexample"]["x"])


def test_cli_vnncomp_on_a_local_cluster(tmp_path, capsys):
    bench = make_bench(tmp_path)
    serial = [r["result"] for r in run_csv(bench / "instances.csv", progress=False)]
    assert main(["vnncomp", str(bench / "instances.csv"), "--scheduler", "local:2", "--out",
                 str(tmp_path / "r.csv")]) == 0
    with open(tmp_path / "r.csv", newline="") as f:
        rows = {(r["onnx"], r["vnnlib"]): r["result"] for r in csv.DictReader(f)}
    assert [rows["digits.onnx", f"specs/prop_{i}_{eps}.vnnlib"] for i, eps in BENCH_CASES] == serial
    assert f"{serial.count('sat')} sat, {serial.count('unsat')} unsat" in capsys.readouterr().out


def test_compare_on_the_cluster(client):
    model, Xt, yt = digits_model()
    X, y = torch.as_tensor(Xt[:6]), torch.as_tensor(yt[:6])
    kw = dict(methods=("pgd", "ibp", "crown", "lp", "milp"), attack_steps=10, progress=False)
    serial = compare(model, X, y, 0.05, **kw)
    on_cluster = compare(model, X, y, 0.05, client=client, **kw)
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]
    assert strip(serial.rows) == strip(on_cluster.rows)
    assert on_cluster.ok


# last in the module: the worker it kills may take a while to come back
def test_certify_survives_a_killed_worker(client):
    model, Xt, yt = digits_model()
    X, y = Xt[:30], yt[:30]
    serial = certify(model, X, y, 0.1, method="milp", progress=False)
    killed = []
    killer = threading.Thread(target=_kill_a_busy_worker, args=(client, killed, "robustopt-bound_task"))
    killer.start()
    on_cluster = certify(model, X, y, 0.1, method="milp", client=client, progress=False)
    killer.join()
    assert killed, "no worker was killed"
    assert_same_certificates(serial, on_cluster)
