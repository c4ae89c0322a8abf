"""Chapter 2: linear models, where the inner maximization is exact and robust training is a convex problem.

A standard logistic regression on two classes, its optimal ℓ∞ perturbation (-y eps sign(w): the same picture for
every image) and how far the error jumps under it; then robust training, which minimizes the exact worst-case
logistic loss, and its exact worst-case error. Everything is also done with the pixel box [0, 1] kept (the
tutorial ignores it): the worst case is then still exact (per pixel), and training with it stays convex.

    python examples/02_linear_models.py                              # 8×8 digits 0 vs 1, seconds
    python examples/02_linear_models.py --data mnist --root DIR      # MNIST 0 vs 1, the tutorial's experiment
    python examples/02_linear_models.py --data fashion-mnist         # Fashion-MNIST 0 vs 1 (T-shirt vs trouser)

Prints a table of clean and exact worst-case test errors and saves the picture of the optimal perturbation (and of
the robust model's weights) as a PNG. Worst-case errors here are exact, not attack estimates: a linear model's
minimum margin over the set has a closed form.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from robustopt.data import load_digits, load_fashion_mnist, load_mnist
from robustopt.linear import RobustLogisticRegression, RobustlySeparableError

BOX = (0.0, 1.0)


def load(args):
    """(X_train, y_train, X_test, y_test, side) for the two classes, X flat in [0, 1]."""
    if args.data == "digits":
        loader = load_digits
    else:
        loader = (lambda **kw: load_mnist(root=args.root, **kw)) if args.data == "mnist" else \
            (lambda **kw: load_fashion_mnist(root=args.root, **kw))
    (X, y), (Xt, yt) = (loader(classes=args.classes, split=s) for s in ("train", "test"))
    return X.astype(np.float64), y, Xt.astype(np.float64), yt, int(round(np.sqrt(X.shape[1])))


def fit(eps, C, box, X, y, tol):
    """A robust logistic regression; the pure robust objective (C=None) falls back to C=1 on data that are
    eps-robustly separable (where it has no minimizer)."""
    start = time.perf_counter()
    lower, upper = box if box else (None, None)
    try:
        model = RobustLogisticRegression(eps=eps, C=C, lower=lower, upper=upper, tol=tol).fit(X, y)
    except RobustlySeparableError:
        print(f"  (eps={eps}: the training data are robustly separable, C=None has no minimizer: using C=1)")
        model = RobustLogisticRegression(eps=eps, C=1.0, lower=lower, upper=upper, tol=tol).fit(X, y)
    return model, time.perf_counter() - start


def errors(model, X, y, eps):
    """Clean error and exact worst-case error without and with the box [0, 1], at radius eps."""
    no_box = 1 - model.set_params(lower=None, upper=None).robust_score(X, y, eps=eps)
    boxed = 1 - model.set_params(lower=BOX[0], upper=BOX[1]).robust_score(X, y, eps=eps)
    return 1 - model.score(X, y), no_box, boxed


def save_picture(path, side, standard, robust, X, y, eps):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"(no picture: saving {path} needs matplotlib, pip install 'robustopt[plot]')")
        return
    w = standard.coef_[0]
    X_adv = standard.set_params(lower=None, upper=None).adversarial_examples(X, y, eps=eps)
    fooled = np.flatnonzero(standard.predict(X_adv) != y)
    i = fooled[0] if fooled.size else 0  # an image the perturbation fools, if there is one
    x, label, x_adv = X[i], y[i], X_adv[i]
    panels = [(np.sign(w), "optimal perturbation:\nsign(w), standard model", "bwr"),
              (x, f"test image (label {label})", "gray"),
              (x_adv, f"+ optimal perturbation, eps={eps}\n(prediction {standard.predict(x_adv[None])[0]})", "gray"),
              (robust.coef_[0], "w of the robust model", "bwr")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    for ax, (image, title, cmap) in zip(axes, panels):
        limit = np.abs(image).max() or 1.0
        kwargs = {"vmin": -limit, "vmax": limit} if cmap == "bwr" else {"vmin": min(0, image.min()), "vmax": 1}
        ax.imshow(image.reshape(side, side), cmap=cmap, **kwargs)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"saved {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=("digits", "mnist", "fashion-mnist"), default="digits")
    parser.add_argument("--root", default=None, help="folder with the IDX files (default: the usual places)")
    parser.add_argument("--classes", type=int, nargs=2, default=(0, 1))
    parser.add_argument("--eps", type=float, default=0.2, help="l_inf radius (pixels are in [0, 1])")
    parser.add_argument("--C", type=float, default=1.0, help="penalty of the standard model (C * sum loss + |w|^2/2)")
    parser.add_argument("--tol", type=float, default=1e-8, help="KKT tolerance of the fast exact solver")
    parser.add_argument("--out", default="linear_perturbation.png", help="where to save the picture")
    args = parser.parse_args(argv)
    try:
        X, y, Xt, yt, side = load(args)
    except FileNotFoundError as err:
        sys.exit(str(err))
    eps = args.eps
    print(f"{args.data}, classes {args.classes[0]} vs {args.classes[1]}: {len(X)} training, {len(Xt)} test images "
          f"of {X.shape[1]} pixels; l_inf eps = {eps}")

    standard, t_standard = fit(0.0, args.C, None, X, y, args.tol)
    robust, t_robust = fit(eps, None, None, X, y, args.tol)
    boxed, t_boxed = fit(eps, None, BOX, X, y, args.tol)
    rows = [("standard logistic (C=%g)" % args.C, standard, t_standard),
            (f"robust, eps={eps}, no box", robust, t_robust),
            (f"robust, eps={eps}, box [0,1]", boxed, t_boxed)]

    print(f"\ntest errors; worst case = exact, over the l_inf ball of radius {eps} (box: x' kept in [0, 1])")
    print(f"| {'model':<30} | {'clean':>7} | {'worst case, no box':>18} | {'worst case, box':>15} | "
          f"{'train s':>7} | {'nonzero w':>9} |")
    print(f"|{'-' * 32}|{'-' * 9}|{'-' * 20}|{'-' * 17}|{'-' * 9}|{'-' * 11}|")
    for name, model, seconds in rows:
        clean, no_box, box = errors(model, Xt, yt, eps)
        print(f"| {name:<30} | {clean:>7.4f} | {no_box:>18.4f} | {box:>15.4f} | {seconds:>7.2f} | "
              f"{np.count_nonzero(model.coef_):>9d} |")
    print(f"\nsolver: {robust.solver_}; robust model's mean worst-case training loss {robust.objective_:.6f} "
          f"(KKT residual {robust.kkt_residual_:.1e}, certified relative duality gap {robust.duality_gap_})")
    save_picture(args.out, side, standard, robust, Xt, yt, eps)


if __name__ == "__main__":
    main()
