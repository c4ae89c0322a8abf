"""One way to run independent tasks: in this process, over ``n_jobs`` local processes, or on a Dask cluster.

:func:`run_tasks` calls ``function(shared, task)`` for every task and yields ``(t, outcome)`` as tasks
finish (in any order). ``shared`` (the network, the data, the settings) travels to each worker **once**:

- ``n_jobs=1`` (and no client): in this process, in order;
- ``n_jobs=k``: joblib's ``loky`` processes on this machine (``shared`` is pickled once and each process
  unpickles it once, keyed by its bytes);
- ``client=``: a ``dask.distributed.Client``. ``shared`` is scattered to every worker (``broadcast=True``),
  and the tasks are Dask futures that depend on it. The scheduler reruns the task of a worker that dies on
  another worker (up to ``distributed.scheduler.allowed-failures`` times), so nothing is lost or counted
  twice. Dask futures rather than joblib's Dask backend: they let the shared data be scattered once and
  yield results as they finish; ``bench/scale.py`` measures both (per-task overhead).

A task that raises, or whose workers all died, yields a :class:`TaskError` with the message instead of
stopping the run. Workers run torch with one thread. The same ``function`` runs in every mode, so the
outcomes do not depend on the mode (bit for bit, where no time limit binds).
"""
from __future__ import annotations

import contextlib
import os
import pickle
import uuid

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["run_tasks", "scattered", "TaskError", "check_n_jobs", "check_client", "require_distributed", "worker_pool",
           "local_client"]

_CACHE = {}  # pickled shared object -> the object, per loky worker process
CLUSTER_EXTRA = "pip install 'robustopt[cluster]' (or pip install 'dask[distributed]')"


class TaskError:
    """A task that failed: ``message`` is ``"ExceptionType: text"``."""

    def __init__(self, message: str):
        self.message = message

    def __repr__(self):
        return f"TaskError({self.message!r})"


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split()) or type(err).__name__}"


def check_n_jobs(n_jobs) -> int:
    """``None`` -> 1, ``-1`` -> every CPU (``os.cpu_count()``), an int >= 1 as is; anything else raises."""
    if n_jobs is None:
        return 1
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or (n_jobs < 1 and n_jobs != -1):
        raise ValueError(f"n_jobs must be an int >= 1, -1 (every CPU) or None (1); got {n_jobs!r}")
    return (os.cpu_count() or 1) if n_jobs == -1 else int(n_jobs)


def require_distributed():
    """The ``distributed`` module, or an ImportError naming the ``cluster`` extra."""
    try:
        import distributed
    except ImportError:
        raise ImportError(f"a Dask cluster (client= / --scheduler) needs dask.distributed: {CLUSTER_EXTRA}") \
            from None
    return distributed


def check_client(client, n_jobs=1):
    """``client`` is None or a ``dask.distributed.Client``; giving both it and ``n_jobs > 1`` is an error."""
    if client is None:
        return None
    distributed = require_distributed()
    if not isinstance(client, distributed.Client):
        raise ValueError(f"client must be a dask.distributed.Client; got {type(client).__name__}")
    if check_n_jobs(n_jobs) != 1:
        raise ValueError(f"give n_jobs (local processes) or client (a Dask cluster), not both; got n_jobs={n_jobs}")
    return client


def local_client(workers: int):
    """A ``Client`` on a new ``LocalCluster`` of ``workers`` processes with one thread each, which import the
    same robustopt as this process (close the client, then ``client.cluster``, after)."""
    distributed = require_distributed()
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH", "")) if p)
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       dashboard_address=":0", env={"PYTHONPATH": path, "OMP_NUM_THREADS": "1"})
    return distributed.Client(cluster)


def worker_pool(n_jobs):
    """A joblib ``Parallel`` yielding results as they finish (needs joblib >= 1.4, which scikit-learn brings)."""
    import joblib

    try:
        return joblib.Parallel(n_jobs=n_jobs, backend="loky", return_as="generator_unordered")
    except (TypeError, ValueError) as err:  # pragma: no cover - old joblib
        raise ValueError(f"n_jobs > 1 needs joblib >= 1.4 (installed: {joblib.__version__}): {err}") from None


def _guarded(function, shared, t, task):
    try:
        return t, function(shared, task)
    except Exception as err:  # recorded as this task's error; the run goes on
        return t, TaskError(_describe(err))


def _in_loky(function, blob, t, task):
    torch.set_num_threads(1)
    shared = _CACHE.get(blob)
    if shared is None:
        _CACHE.clear()
        shared = _CACHE[blob] = pickle.loads(blob)
    return _guarded(function, shared, t, task)


def _in_dask(function, shared, t, task):
    torch.set_num_threads(1)
    return _guarded(function, shared, t, task)


def _dask_outcomes(client, function, shared, tasks):
    distributed = require_distributed()
    own = not isinstance(shared, distributed.Future)  # else: scattered already, by :func:`scattered`
    shared_future = client.scatter(shared, broadcast=True, hash=False) if own else shared
    run = uuid.uuid4().hex[:8]
    futures = client.map(_in_dask, [function] * len(tasks), [shared_future] * len(tasks), range(len(tasks)), tasks,
                         pure=False, key=[f"robustopt-{function.__name__}-{run}-{t}" for t in range(len(tasks))])
    index = {future.key: t for t, future in enumerate(futures)}
    try:
        # the results of all the futures that finished meanwhile in one round trip, not one per future
        for batch in distributed.as_completed(futures).batches():
            failed = [f for f in batch if f.status != "finished"]  # e.g. KilledWorker: its workers died too often
            finished = [f for f in batch if f.status == "finished"]
            yield from client.gather(finished)
            for future in failed:
                yield index[future.key], TaskError(_describe(future.exception()))
            for future in batch:
                future.release()
    finally:
        client.cancel(futures)
        if own:
            client.cancel([shared_future])


@contextlib.contextmanager
def scattered(shared, client=None):
    """``shared`` sent to every worker of ``client`` once, for several :func:`run_tasks` calls (as is without a
    client); released afterwards."""
    if client is None:
        yield shared
        return
    future = client.scatter(shared, broadcast=True, hash=False)
    try:
        yield future
    finally:
        client.cancel([future])


def run_tasks(function, shared, tasks, *, n_jobs=1, client=None, progress=False, desc="tasks"):
    """Yield ``(t, function(shared, tasks[t]))`` for every t as the tasks finish, or ``(t, TaskError)`` for a
    task that failed. ``function`` must be a module-level function (it is pickled by name); with a client,
    ``shared`` may be a future from :func:`scattered`."""
    tasks = list(tasks)
    n_jobs = min(check_n_jobs(n_jobs), max(len(tasks), 1))
    client = check_client(client)
    where = "Dask" if client is not None else f"{n_jobs} job{'s' if n_jobs > 1 else ''}"
    with tqdm(total=len(tasks), desc=f"{desc} ({where})", disable=not progress, leave=False) as bar:
        if client is not None and tasks:
            outcomes = _dask_outcomes(client, function, shared, tasks)
        elif n_jobs > 1:
            from joblib import delayed

            blob = pickle.dumps(shared)
            outcomes = worker_pool(n_jobs)(delayed(_in_loky)(function, blob, t, task) for t, task in enumerate(tasks))
        else:
            outcomes = (_guarded(function, shared, t, task) for t, task in enumerate(tasks))
        for t, outcome in outcomes:
            bar.update()
            yield t, outcome
