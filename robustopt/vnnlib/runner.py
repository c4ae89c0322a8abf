"""VNN-COMP-style runs: one instance (:func:`run_instance`) or a whole instances CSV (:func:`run_csv`).

An instances CSV has one row ``onnx,vnnlib,timeout`` per instance (no header, as VNN-COMP writes it; a
header line ``onnx,vnnlib,timeout`` is skipped), the paths relative to a root folder (default: the CSV's
folder). :func:`run_csv` verifies every row with :func:`~robustopt.vnnlib.verify_property` under the
row's timeout, spreads the instances over ``n_jobs`` processes (one torch thread each; each process
loads a network once), and writes ``onnx,vnnlib,result,seconds``.
"""
from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..verify.methods import check_time_limit
from ..verify.parallel import check_n_jobs, worker_pool
from .reader import load
from .verify import DEFAULT_TIME_LIMIT, verify_property
from .writer import write_result

__all__ = ["Instance", "read_instances", "run_instance", "run_csv", "write_results", "RESULT_COLUMNS"]

RESULT_COLUMNS = ("onnx", "vnnlib", "result", "seconds")
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


def _run_row(index, inst, method, options, threads):
    if threads is not None:
        torch.set_num_threads(threads)
    return index, run_instance(inst.onnx_path, inst.vnnlib_path, inst.timeout, method, **options)


def run_csv(path, root=None, out=None, n_jobs=1, method="auto", progress=True, **options) -> list:
    """Verify every instance of the CSV ``path`` (see the module docstring); ``n_jobs`` processes (-1: every
    CPU). Returns one dict per row, in the CSV's order: ``onnx``, ``vnnlib`` (as written), ``result``,
    ``seconds``, ``counterexample``, ``decided_by``. Writes the results CSV to ``out`` when given.
    Other keyword options go to :func:`verify_property`."""
    instances = read_instances(path, root)
    n_jobs = min(check_n_jobs(n_jobs), len(instances))
    reports = [None] * len(instances)
    with tqdm(total=len(instances), desc="vnncomp", disable=not progress) as bar:
        if n_jobs == 1:
            results = (_run_row(i, inst, method, options, None) for i, inst in enumerate(instances))
        else:
            from joblib import delayed

            results = worker_pool(n_jobs)(delayed(_run_row)(i, inst, method, options, 1)
                                          for i, inst in enumerate(instances))
        for i, report in results:
            reports[i] = report
            bar.update()
            bar.set_postfix_str(f"{instances[i].vnnlib}: {report['result']}")
    rows = [{"onnx": inst.onnx, "vnnlib": inst.vnnlib, "result": rep["result"], "seconds": rep["seconds"],
             "counterexample": rep["counterexample"], "decided_by": rep["decided_by"]}
            for inst, rep in zip(instances, reports)]
    if out is not None:
        write_results(out, rows)
    return rows


def write_results(path, rows) -> None:
    """The results CSV: header ``onnx,vnnlib,result,seconds``, seconds with 3 decimals."""
    with open(os.fspath(path), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(RESULT_COLUMNS)
        for row in rows:
            writer.writerow([row["onnx"], row["vnnlib"], row["result"], f"{row['seconds']:.3f}"])
