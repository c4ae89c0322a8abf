"""Text forms of a comparison: markdown tables, CSV, JSON-able data, and the environment record."""
from __future__ import annotations

import csv
import math
import platform
from importlib import metadata as importlib_metadata

import numpy as np

__all__ = ["environment", "jsonable", "level_radius", "markdown", "example_table", "write_csv", "PACKAGES", "LEGEND"]

PACKAGES = ("robustopt", "torch", "numpy", "scipy", "cvxpy", "highspy", "scikit-learn", "onnx", "matplotlib")
LEGEND = ("Margins f_y − max_j f_j: clean, at the attack's point (an upper bound on the minimum over the ball), "
          "the exact minimum (MILP), and each method's certified lower bound with its verdict (✓ certified, "
          "✗ falsified by a point of the ball, ? unknown, t time limit, e solver error).")
STATUS_MARK = {"certified": "✓", "falsified": "✗", "unknown": "?", "time_limit": "t", "error": "e"}


def _version(name):
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    """Torch threads, Python, platform and package versions: what a result needs to be reproduced."""
    import torch

    from .. import __version__

    versions = {name: _version(name) for name in PACKAGES}
    versions["robustopt"] = __version__  # also when run from a checkout that is not installed
    return {"threads": torch.get_num_threads(), "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions}


def jsonable(value):
    """Plain JSON data from numpy / torch values: arrays to lists, NaN to null, +-inf to "inf" / "-inf"."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def level_radius(eps) -> float:
    """One number for a radius level: itself, or the mean of per-example radii."""
    return float(np.mean(eps)) if isinstance(eps, (list, tuple)) else float(eps)


def _num(value, digits=4):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.3e}"


def _pct(value):
    return "–" if value is None else f"{100 * value:.1f}%"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else ":---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _summary_table(comparison):
    attacks, methods = comparison.attacks, comparison.methods
    header = ["ε", "n", "clean acc."] + [f"{a} acc." for a in attacks]
    header += ["exact robust acc."] if comparison.exact else []
    header += [f"{m} certified" for m in methods] + ["chain"]
    rows = []
    for s in comparison.summary:
        exact = []
        if comparison.exact:
            exact = [_pct(s["exact_robust_accuracy"]) if s["exact_robust_accuracy"] is not None
                     else f"– ({s['undecided']} undecided)"]
        chain = "ok" if s["chain_ok"] else f"**{s['chain_violations']} VIOLATED**"
        rows.append([_num(level_radius(s["eps"])), s["n"], _pct(s["clean_accuracy"])]
                    + [_pct(s["attack_accuracy"][a]) for a in attacks] + exact
                    + [_pct(s["certified_accuracy"][m]) for m in methods] + [chain])
    return _table(header, rows)


def _time_table(comparison):
    names = comparison.attacks + comparison.methods
    rows = [[_num(level_radius(s["eps"]))] + [f"{1000 * s['seconds'][m] / max(s['n'], 1):.1f}" for m in names]
            for s in comparison.summary]
    return _table(["ε"] + [f"{m} (ms/example)" for m in names], rows)


def example_table(comparison, level, max_rows=None) -> str:
    """The per-example markdown table of one level (the first ``max_rows`` rows; None for all)."""
    rows = comparison.level_rows(level)
    return _example_table(comparison, rows if max_rows is None else rows[:max_rows])


def _example_table(comparison, rows):
    methods = [m for m in comparison.methods if m != "milp"]  # the MILP's bound is the exact column
    header = ["#", "label", "clean margin"] + [f"{a} margin" for a in comparison.attacks]
    header += ["exact (MILP)"] if comparison.exact else []
    header += [f"{m} bound" for m in methods]
    body = []
    for r in rows:
        line = [r["example"], r["label"], _num(r["clean_margin"])]
        line += [_num(r[f"{a}_margin"]) for a in comparison.attacks]
        if comparison.exact:  # the value where solved to optimality, else the proven bound and the status
            line.append(_num(r["exact"]) if not math.isnan(r["exact"]) else _bound(r, "milp"))
        line += [_bound(r, m) for m in methods]
        if r["chain"] != "ok":
            line[0] = f"**{line[0]} VIOLATED**"
        body.append(line)
    return _table(header, body)


def _bound(row, method):
    status = row[f"{method}_status"]
    return f"{_num(row[f'{method}_lower'])} {STATUS_MARK.get(status, status)}"


def markdown(comparison, level, max_rows=20) -> str:
    """Summary, time per method, chain check, and the per-example table of ``level``."""
    settings = comparison.settings
    n = comparison.summary[0]["n"] if comparison.summary else 0
    box = f"box [{settings.get('lower')}, {settings.get('upper')}]"
    out = [f"### Summary: {n} examples, ℓ{_norm(settings.get('norm'))} ball ∩ {box}",
           "", "Accuracy under each attack (an upper bound on the robust accuracy), exact (MILP) robust accuracy, "
           "and certified accuracy per bound method (lower bounds).", "", _summary_table(comparison),
           "", "Time per example:", "", _time_table(comparison), "", _chain_text(comparison)]
    rows = comparison.level_rows(level)
    shown = rows if max_rows is None else rows[:max_rows]
    eps = comparison.eps[level]
    out += ["", f"### Per example at ε = {_num(level_radius(eps))}" + (" (mean of per-example radii)"
                                                                       if isinstance(eps, list) else ""),
            "", LEGEND, "", _example_table(comparison, shown)]
    if len(shown) < len(rows):
        out.append(f"\n({len(rows) - len(shown)} more rows in the CSV / JSON output)")
    return "\n".join(out)


def _norm(norm):
    return {"inf": "∞", 2: "2", 1: "1", "2": "2", "1": "1"}.get(norm, str(norm))


def _chain_text(comparison):
    checks = comparison.settings.get("chain_checks", 0)
    if comparison.ok:
        return (f"Bound chain (each bound ≤ LP ≤ exact ≤ attack margin, where valid) checked on {checks} "
                f"(example, class, relation) triples: no violation.")
    lines = [f"**BOUND CHAIN VIOLATED** on {len(comparison.violations)} of {checks} checks (a soundness bug):", "",
             _table(["ε", "#", "class", "relation", "lhs", "rhs", "excess"],
                    [[_num(level_radius(v["eps"])), v["example"], v["class"], v["relation"], _num(v["lhs"], 8),
                      _num(v["rhs"], 8), _num(v["excess"], 3)] for v in comparison.violations[:20]])]
    return "\n".join(lines)


def write_csv(rows, path):
    """Rows (dicts) as CSV; the columns are the union of the keys in first-seen order."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
