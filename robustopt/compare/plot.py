"""The comparison picture: (a) per-example intervals between the certified and the attack bound, with the
exact value marked; (b) accuracy versus ε for the attacks, the exact value and each certificate."""
from __future__ import annotations

import math

import numpy as np

from .report import level_radius

__all__ = ["plot_comparison", "require_matplotlib"]

MARKERS = {"ibp": "v", "crown": "^", "alpha-crown": "P", "dual": "s", "lp": "D", "lp-cvxpy": "d", "milp": "*"}
COLORS = {"ibp": "tab:orange", "crown": "tab:blue", "alpha-crown": "tab:cyan", "dual": "tab:purple",
          "lp": "tab:green", "lp-cvxpy": "tab:olive", "milp": "black", "pgd": "tab:red", "apgd": "tab:pink"}
NORM_NAMES = {"inf": "ℓ∞", 2: "ℓ2", 1: "ℓ1", "2": "ℓ2", "1": "ℓ1"}


def require_matplotlib():
    """Import matplotlib with a headless backend, or raise an ImportError saying how to get it."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'robustopt[plot]' (or pip install matplotlib)") \
            from None
    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finite(values):
    values = np.asarray(values, dtype=float)
    return values[np.isfinite(values)]


def _intervals(ax, comparison, level, max_examples):
    rows = comparison.level_rows(level)[:max_examples]
    bounds = [m for m in comparison.methods if m != "milp"]
    attacks = comparison.attacks
    upper = np.array([min([r[f"{a}_margin"] for a in attacks] or [r["upper"]]) for r in rows])
    lower = {m: np.array([r[f"{m}_lower"] for r in rows]) for m in bounds}
    best = np.max(np.stack(list(lower.values())), 0) if lower else np.full(len(rows), np.nan)
    exact = np.array([r.get("exact", math.nan) for r in rows])
    order = np.argsort(np.where(np.isfinite(exact), exact, upper), kind="stable")
    pos = np.arange(len(rows))
    core = np.concatenate([_finite(best), _finite(upper), _finite(exact)])
    lo, hi = (core.min(), core.max()) if core.size else (-1.0, 1.0)
    pad = 0.08 * max(hi - lo, 1e-3)
    bottom, top = lo - pad, hi + pad
    ax.axhspan(bottom, 0, color="0.93", zorder=0)
    ax.axhline(0, color="0.4", lw=0.8, zorder=1)
    if bottom < 0 < top:
        ax.text(len(rows) - 0.4, 0, "margin ≤ 0: not robust ", fontsize=8, color="0.35", va="top", ha="right")
    for p, i in zip(pos, order):
        if np.isfinite(best[i]) and np.isfinite(upper[i]):
            ax.plot([p, p], [best[i], upper[i]], color="0.6", lw=5, solid_capstyle="butt", zorder=2)
    for k, m in enumerate(bounds):  # side by side within each example's slot, so that equal bounds stay visible
        values, at = lower[m][order], pos + 0.12 * (k - (len(bounds) - 1) / 2)
        clipped = values < bottom
        ax.scatter(at[~clipped], values[~clipped], marker=MARKERS.get(m, "o"), s=22, color=COLORS.get(m),
                   zorder=3)
        if clipped.any():
            ax.scatter(at[clipped], np.full(clipped.sum(), bottom + 0.25 * pad), marker="$\\downarrow$", s=40,
                       color=COLORS.get(m), zorder=3)
    ax.scatter(pos, upper[order], marker="_", s=140, lw=2.2, color=COLORS.get(attacks[0] if attacks else "pgd"),
               zorder=4)
    if comparison.exact:
        ax.scatter(pos, exact[order], marker="*", s=70, color="black", zorder=5)
    ax.set_ylim(bottom, top)
    ax.set_xlim(-0.7, len(rows) - 0.3)
    ax.set_xticks(pos)
    ax.set_xticklabels([str(rows[i]["example"]) for i in order], fontsize=7, rotation=90 if len(rows) > 20 else 0)
    eps = comparison.eps[level]
    ax.set_xlabel("example (sorted by exact / attack margin)")
    ax.set_ylabel(r"margin $f_y - f_j$, min over $j \neq y$ and the ball")
    ax.set_title(f"(a) each example at ε = {level_radius(eps):g}: grey bar from the best certified lower bound "
                 f"to the attack's margin", fontsize=9.5)
    if any(np.any(lower[m] < bottom) for m in bounds):
        ax.text(0.01, 0.98, "↓ at the bottom: a bound below the plotted range", transform=ax.transAxes, fontsize=8,
                color="0.35", va="top")


def _curves(ax, comparison):
    curves = comparison.curves()
    eps = np.array(curves["eps"])
    order = np.argsort(eps)
    x = eps[order]

    def draw(name, label, **style):
        y = np.array([np.nan if v is None else 100 * v for v in curves[name]], dtype=float)[order]
        ax.plot(x, y, label=label, **style)

    draw("clean", "clean accuracy (panel b)", color="0.5", ls=":", lw=1.5)
    for a in comparison.attacks:
        draw(a, f"{a} attack (upper bound)", color=COLORS.get(a), marker="_", ms=12, mew=2.2, lw=2)
    if comparison.exact:
        draw("exact", "exact (MILP)", color="black", marker="*", ms=9, lw=2)
    for m in comparison.methods:
        if m != "milp":
            draw(m, f"{m} (certified lower bound)", color=COLORS.get(m), marker=MARKERS.get(m, "o"), ls="--",
                 lw=1.3)
    norm = NORM_NAMES.get(comparison.settings.get("norm"), "")
    ax.set_xlabel(f"ε ({norm} radius{', inputs in [0, 1]' if comparison.settings.get('upper') == 1.0 else ''})")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-3, 103)
    if len(x) == 1:
        ax.set_xlim(x[0] * 0.5 if x[0] > 0 else -0.01, x[0] * 1.5 if x[0] > 0 else 0.01)
    ax.grid(alpha=0.3)
    ax.set_title("(b) accuracy versus ε: attack above, exact between, certificates below", fontsize=9.5)


def plot_comparison(comparison, path=None, level=0, max_examples=40, title=None):
    """Draw both panels; save to ``path`` when given (the format from its suffix, PNG at 150 dpi)."""
    plt = require_matplotlib()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.4), gridspec_kw={"width_ratios": [1.5, 1]})
    _intervals(axes[0], comparison, level, max_examples)
    _curves(axes[1], comparison)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8.5, frameon=False)
    n = comparison.summary[0]["n"] if comparison.summary else 0
    fig.suptitle(title or f"Attack, exact and certified bounds on {n} examples", fontsize=11)
    rows_of_legend = math.ceil(len(labels) / 5)
    fig.tight_layout(rect=(0, 0.045 * rows_of_legend + 0.01, 1, 1))
    if path is not None:
        fig.savefig(path, dpi=150)
        plt.close(fig)
    return fig
