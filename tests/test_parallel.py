"""certify(n_jobs=k): the same verdicts, bounds and counterexamples with 2 processes
as with 1 (solvers: a task per example; torch methods: a task per batch); n_jobs is validated."""
import os

import pytest

from robustopt.verify import certify
from robustopt.verify.parallel import check_n_jobs
from vnn_helpers import assert_same_certificates, digits_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("method, eps", [("milp", 0.08), ("lp", 0.05)])
def test_two_jobs_give_identical_results(method, eps):
    model, Xt, yt = digits_model()
    X, y = Xt[:12], yt[:12]
    one = certify(model, X, y, eps, method=method, n_jobs=1, progress=False)
    two = certify(model, X, y, eps, method=method, n_jobs=2, progress=False)
    assert_same_certificates(one, two)
    counts = one.counts
    assert counts["certified"] > 0 and counts["falsified"] > 0, counts  # both kinds are exercised


def test_torch_methods_send_batches_with_the_same_results():
    model, Xt, yt = digits_model()
    one = certify(model, Xt[:20], yt[:20], 0.05, method="crown", batch_size=6, progress=False)
    two = certify(model, Xt[:20], yt[:20], 0.05, method="crown", batch_size=6, n_jobs=2, progress=False)
    assert_same_certificates(one, two)


def test_check_n_jobs():
    assert check_n_jobs(None) == 1 and check_n_jobs(3) == 3 and check_n_jobs(-1) == (os.cpu_count() or 1)
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ValueError, match="n_jobs"):
            check_n_jobs(bad)
    model, Xt, yt = digits_model()
    with pytest.raises(ValueError, match="n_jobs"):
        certify(model, Xt[:2], yt[:2], 0.01, method="milp", n_jobs=0, progress=False)
