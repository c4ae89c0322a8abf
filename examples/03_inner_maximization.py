"""Chapter 3: the inner maximization for a ReLU network, solved three ways on the same small network.

For an example (x, y) the question is the smallest margin m(x') = f_y(x') - max_{j != y} f_j(x') over the ball
B = {x' : ||x' - x||_inf <= eps, 0 <= x' <= 1}; the example is robust iff it is > 0. (The tutorial speaks of the
largest loss; in the margin frame the directions flip: an attack's point gives an *upper* bound on the minimum
margin, a relaxation a *lower* bound.)

1. attacks (FGSM, PGD): a point of B, so its margin is an upper bound on the minimum;
2. the exact minimum: a mixed-integer linear program with one binary per unstable ReLU (MILP, HiGHS);
3. relaxations, proven lower bounds: interval bounds (IBP), linear bounds (CROWN and the Wong–Kolter dual
   network), and the LP relaxation of the ReLUs (the triangle LP).

They always satisfy   IBP, CROWN, dual  <=  LP  <=  exact  <=  attack margin,   which ``robustopt.compare``
checks on every example and class. The script prints the chain on one example, then the comparison table, and
saves the comparison plot.

    python examples/03_inner_maximization.py                                 # embedded 8×8 digits, ~1 minute
    python examples/03_inner_maximization.py --data mnist --root DIR         # MNIST IDX files in DIR
    python examples/03_inner_maximization.py --out docs/comparison.png       # the README's picture
"""
from __future__ import annotations

import argparse
import time

import torch

from robustopt import models
from robustopt.attacks import fgsm, pgd
from robustopt.compare import compare
from robustopt.data import load_digits, load_fashion_mnist, load_mnist
from robustopt.verify import margin_bounds

SETTINGS = {  # small networks, so that the exact MILP takes seconds
    "digits": dict(n_train=None, hidden=(32, 32), epochs=15, eps=(0.02, 0.05, 0.08, 0.12), n=20),
    "mnist": dict(n_train=10000, hidden=(32, 32), epochs=4, eps=(0.01, 0.02, 0.03), n=8),
    "fashion-mnist": dict(n_train=10000, hidden=(32, 32), epochs=4, eps=(0.01, 0.02, 0.03), n=8),
}


def load(name, root, n_train):
    """Flat images in [0, 1]: (X_train, y_train, X_test, y_test)."""
    if name == "digits":
        (X, y), (Xt, yt) = (load_digits(split=s) for s in ("train", "test"))
    else:
        loader = load_mnist if name == "mnist" else load_fashion_mnist
        (X, y), (Xt, yt) = (loader(root, split=s) for s in ("train", "test"))
    return X[:n_train], y[:n_train], Xt, yt


def one_example(model, x, y, eps):
    """The chain on one example: every bound on its minimum margin, lowest first."""
    x, y = torch.as_tensor(x[None]), torch.as_tensor(y[None])
    values = {}
    for method in ("ibp", "crown", "dual", "lp", "milp"):
        values[f"{method} (lower bound)"] = margin_bounds(model, x, y, eps, method=method)[0].min().item()
    with torch.no_grad():
        logits = model(x)
    others = logits.clone()
    others[0, y] = -float("inf")
    values["clean point"] = (logits[0, y] - others.max()).item()
    values["FGSM (upper bound)"] = fgsm(model, x, y, eps, loss="margin").margin.item()
    values["PGD-100 (upper bound)"] = pgd(model, x, y, eps, steps=100, restarts=5, loss="margin", seed=0).margin.item()
    print(f"the minimum margin of test example 0 (label {int(y)}) over the l_inf ball of radius {eps}:")
    for name, value in sorted(values.items(), key=lambda kv: kv[1]):
        print(f"  {value:10.4f}  {name.replace('milp (lower bound)', 'MILP (exact minimum)')}")


def main():
    parser = argparse.ArgumentParser(description="attack, exact MILP and relaxations on one small network")
    parser.add_argument("--data", default="digits", choices=tuple(SETTINGS))
    parser.add_argument("--root", default=None, help="folder with the IDX files (MNIST / Fashion-MNIST)")
    parser.add_argument("--eps", type=float, nargs="+", default=None, help="l_inf radii of the sweep")
    parser.add_argument("--n", type=int, default=None, help="test examples compared (default 20 digits, 8 MNIST)")
    parser.add_argument("--time-limit", type=float, default=5.0,
                        help="MILP seconds per example (past it: status t and the proven bound so far)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="comparison.png", help="where to save the plot")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = SETTINGS[args.data]
    eps, n = args.eps or list(cfg["eps"]), args.n or cfg["n"]
    start = time.perf_counter()
    X, y, Xt, yt = load(args.data, args.root, cfg["n_train"])
    torch.manual_seed(0)
    model = models.mlp(X.shape[1], cfg["hidden"], 10)
    models.fit(model, X, y, epochs=cfg["epochs"], lr=3e-3, batch_size=64, progress=False, device="cpu")
    arch = "-".join(map(str, (X.shape[1], *cfg["hidden"], 10)))
    print(f"{args.data}: a standard {arch} ReLU network, trained in {time.perf_counter() - start:.1f} s\n")

    one_example(model, Xt[0], yt[0], eps[len(eps) // 2])

    comparison = compare(model, torch.as_tensor(Xt[:n]), torch.as_tensor(yt[:n]), eps,
                         methods=("pgd", "ibp", "crown", "dual", "lp", "milp"), time_limit=args.time_limit,
                         progress=False)
    print("\n" + comparison.to_markdown(max_rows=10))
    comparison.plot(args.out, title=f"Lower bounds, exact MILP and attacks: a standard {arch} network on "
                                    f"{'the 8×8 digits' if args.data == 'digits' else args.data}")
    print(f"\nsaved {args.out}; total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
