"""VNN-COMP-style runs: one instance (:func:`run_instance`) or a whole instances CSV (:func:`run_csv`).

An instances CSV has one row ``onnx,vnnlib,timeout`` per instance (no header, as VNN-COMP writes it; a
header line ``onnx,vnnlib,timeout`` is skipped), the paths relative to a root folder (default: the CSV's
folder). :func:`run_csv` verifies every row with :func:`~robustopt.vnnlib.verify_property` under the
row's timeout, spreads the instances over ``n_jobs`` processes or a Dask cluster (one torch thread per worker;
each worker loads a network once), and appends ``onnx,vnnlib,result,seconds,message`` rows as they finish.
"""
from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass

from ..verify.methods import check_time_limit
from ..verify.journal import Journal
from ..verify.parallel import TaskError, run_tasks
from .reader import load
from .verify import DEFAULT_TIME_LIMIT, verify_property
from .writer import write_result

__all__ = ["Instance", "read_instances", "run_instance", "run_csv", "RESULT_COLUMNS"]

RESULT_COLUMNS = ("onnx", "vnnlib", "result", "seconds", "message")
_MODELS = {}  # onnx path -> model, per process


@dataclass(frozen=True)
class Instance:
    """One row of an instances CSV: ``onnx``, ``vnnlib`` (as written), ``timeout`` (seconds), and the paths
    resolved against the root."""

    onnx: str
    vnnlib: str
    timeout: float
    onnx_path: str
    vnnlib_path: str


def read_instances(path, root=None) -> list:
    """The rows of an instances CSV as :class:`Instance` objects; every file must exist (the error lists the
    missing ones) and every timeout be a number of seconds > 0."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"instances CSV not found: {path}")
    root = os.path.dirname(os.path.abspath(path)) if root is None else os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"root folder not found: {root}")
    instances = []
    with open(path, newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            row = [cell.strip() for cell in row]
            if not any(row) or (line == 1 and [c.lower() for c in row[:2]] == ["onnx", "vnnlib"]):
                continue
            if len(row) != 3:
                raise ValueError(f"{path}, line {line}: expected 3 fields onnx,vnnlib,timeout; got {len(row)}: {row}")
            try:
                timeout = check_time_limit(float(row[2]), "timeout")
            except ValueError:
                raise ValueError(f"{path}, line {line}: timeout must be a number of seconds > 0; got {row[2]!r}") \
                    from None
            resolve = lambda p: os.path.normpath(os.path.join(root, p))
            instances.append(Instance(row[0], row[1], timeout, resolve(row[0]), resolve(row[1])))
    if not instances:
        raise ValueError(f"{path}: no instances (expected rows onnx,vnnlib,timeout)")
    missing = sorted({p for inst in instances for p in (inst.onnx_path, inst.vnnlib_path) if not os.path.isfile(p)})
    if missing:
        shown = "\n  ".join(missing[:10]) + (f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise FileNotFoundError(f"{path}: {len(missing)} file(s) named in the CSV are missing (root {root}):"
                                f"\n  {shown}")
    return instances


def cached_model(path):
    """The network at ``path`` (ONNX), loaded once per process."""
    from .. import onnx

    if path not in _MODELS:
        _MODELS[path] = onnx.load(path)
    return _MODELS[path]


def run_instance(onnx_path, vnnlib_path, timeout=DEFAULT_TIME_LIMIT, method="auto", out=None, **options) -> dict:
    """Load a network and a property, verify (:func:`verify_property` with ``time_limit=timeout``), and write the
    VNN-COMP result file to ``out`` when given. Returns verify_property's dict; its ``seconds`` counts loading
    the property and verifying (a network is loaded once per process and not counted)."""
    model = cached_model(os.fspath(onnx_path))
    tic = time.perf_counter()
    prop = load(vnnlib_path)
    report = verify_property(model, prop, method=method, time_limit=timeout, **options)
    report["seconds"] = time.perf_counter() - tic
    if out is not None:
        cex = report["counterexample"]
        write_result(out, report["result"], *((cex["x"], cex["y"]) if cex is not None else ()))
    return report


def _run_row(shared, inst):
    method, options = shared
    return run_instance(inst.onnx_path, inst.vnnlib_path, inst.timeout, method, **options)


def _row(inst, report) -> dict:
    if isinstance(report, TaskError):  # the row failed (e.g. a malformed file); the others go on
        return {"onnx": inst.onnx, "vnnlib": inst.vnnlib, "result": "error", "seconds": 0.0, "counterexample": None,
                "decided_by": None, "message": report.message}
    return {"onnx": inst.onnx, "vnnlib": inst.vnnlib, "result": report["result"], "seconds": report["seconds"],
            "counterexample": report["counterexample"], "decided_by": report["decided_by"], "message": ""}


def _from_file(row) -> dict:
    """A row read back from a results CSV (resumed; its counterexample is not in the CSV)."""
    return {"onnx": row["onnx"], "vnnlib": row["vnnlib"], "result": row["result"], "seconds": float(row["seconds"]),
            "counterexample": None, "decided_by": None, "message": row.get("message", "")}


def run_csv(path, root=None, out=None, n_jobs=1, method="auto", progress=True, *, client=None, resume=False,
            **options) -> list:
    """Verify every instance of the CSV ``path`` (see the module docstring) in this process, in ``n_jobs``
    processes (-1: every CPU) or on a Dask cluster (``client``, a ``dask.distributed.Client``; every worker
    must see the files). Returns one dict per row, in the CSV's order: ``onnx``, ``vnnlib`` (as written),
    ``result`` (sat, unsat, timeout, unknown, or error: the row failed, ``message`` says why), ``seconds``,
    ``counterexample``, ``decided_by``.

    ``out``: the results CSV (``onnx,vnnlib,result,seconds,message``), one row appended and flushed as each
    instance finishes; ``resume=True`` keeps the rows already there and runs only the others.
    Other keyword options go to :func:`verify_property`."""
    instances = read_instances(path, root)
    if resume and out is None:
        raise ValueError("resume=True needs out= (the results CSV of the run to continue)")
    journal = Journal(out, ("onnx", "vnnlib"), RESULT_COLUMNS, resume=resume) if out is not None else None
    done = {key: _from_file(row) for key, row in journal.done.items()} if journal else {}
    todo = [inst for inst in instances if (inst.onnx, inst.vnnlib) not in done]
    try:
        for t, report in run_tasks(_run_row, (method, options), todo, n_jobs=n_jobs, client=client,
                                   progress=progress, desc="vnncomp"):
            row = _row(todo[t], report)
            done[row["onnx"], row["vnnlib"]] = row
            if journal is not None:
                journal.write(dict(row, seconds=f"{row['seconds']:.3f}"))
    finally:
        if journal is not None:
            journal.close()
    return [done[inst.onnx, inst.vnnlib] for inst in instances]
