"""Chapters 2–4 of the tutorial on real MNIST: train, attack, then certify with every verifier we have.

    python examples/05_mnist_tutorial.py [--root DIR]            # the tutorial's MLP, trained here (minutes on CPU)
    python examples/05_mnist_tutorial.py --model FILE [--arch cnn]   # a saved model, e.g. .bench/mnist/pgd.pt

Without ``--model`` it trains the tutorial's two-layer MLP (784-200-10) three ways on a subset of the training
set, at ℓ∞ ε = 0.1 with the box [0, 1]: standard, PGD (Madry et al.) and interval-bound training (ε ramped up over
the first half). Each model is then measured on the first test images:

- clean error and PGD-40 error (an attack: a *lower* bound on the true robust error);
- certified error by IBP (the tutorial's certificate), CROWN and α-CROWN (*upper* bounds on the robust error);
- branch and bound on the first few images, with a time limit per image: where it decides every image the
  robust error is exact, otherwise it is bracketed by [attack error, certified error].

What to look for: on the PGD-trained model the attack says it is robust, interval bounds certify almost nothing,
and α-CROWN and branch and bound close much of that gap; on the IBP-trained model all certificates agree more
closely. ``certified >= exact >= attack`` on every row: a certificate is a proof, an attack only a witness. The
full table (the tutorial's CNN, 10,000 test images, its training recipes) is ``bench/mnist_tutorial.py``; the
chapter 2 table (MNIST 0 vs 1, linear models) is ``examples/02_linear_models.py --data mnist``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from robustopt import models
from robustopt.data import load_mnist
from robustopt.train import evaluate, train

EPS = 0.1
RECIPES = {  # label: train() keyword arguments (SGD as the tutorial; IBP with Adam, as bench/mnist_tutorial.py)
    "standard": dict(method="standard", optimizer="sgd", lr=0.1, momentum=0.0),
    "pgd": dict(method="pgd", optimizer="sgd", lr=0.1, momentum=0.0, steps=10),
    "ibp": dict(method="ibp", optimizer="adam", lr=1e-3),
}


def percent(mask):
    return 100.0 * float(np.mean(mask)) if len(mask) else float("nan")


def report(label, model, X, y, n_complete, time_limit):
    """One row of the table: errors in % (lower bounds from attacks, upper bounds from certificates)."""
    tic = time.perf_counter()
    out = evaluate(model, X, y, EPS, pgd_steps=40, time_limit=time_limit,
                   certify_methods=("ibp", "crown", "alpha-crown", ("bab", n_complete)))
    certified = {m: 100.0 * (1.0 - a) for m, a in out["certified_accuracy"].items()}
    status = out["status"]["bab"]
    attacked = ~out["pgd_robust"][:len(status)] | (status == "falsified")  # a witness found, by PGD or by BaB
    decided = "exact" if np.isin(status, ("certified", "falsified")).all() else "bracket"
    bab = f"[{percent(attacked):.1f}, {certified['bab']:.1f}] {decided}"
    print(f"{label:10s} {100 * (1 - out['clean_accuracy']):6.1f} {100 * (1 - out['pgd_accuracy']):7.1f} "
          f"{certified['ibp']:6.1f} {certified['crown']:6.1f} {certified['alpha-crown']:8.1f} {bab:>22s} "
          f"{time.perf_counter() - tic:6.0f}", flush=True)
    for method, certified_mask in out["certified"].items():
        if (certified_mask & ~out["pgd_robust"][:len(certified_mask)]).any():
            raise AssertionError(f"{method} certified an image the attack broke: please report this bug")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help="folder with the MNIST IDX files (default: see load_mnist)")
    parser.add_argument("--model", default=None, help="evaluate this saved model (robustopt.models.save) instead")
    parser.add_argument("--arch", default="mlp", choices=("mlp", "cnn"), help="the saved model's input layout")
    parser.add_argument("--n-train", type=int, default=10000, help="training images (the first n)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--n-test", type=int, default=200, help="test images for attacks and certificates")
    parser.add_argument("--n-complete", type=int, default=20, help="test images for branch and bound")
    parser.add_argument("--time-limit", type=float, default=10.0, help="seconds per image (alpha-CROWN, BaB)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.arch != "mlp" and not args.model:
        parser.error("--arch cnn describes a saved --model; the models trained here are MLPs")
    torch.set_num_threads(args.threads)
    flat = args.arch == "mlp"
    Xt, yt = load_mnist(args.root, split="test", flatten=flat)
    Xt, yt = Xt[:args.n_test], yt[:args.n_test]
    print(f"MNIST, l_inf eps = {EPS}, box [0, 1]; errors in % on the first {len(yt)} test images, branch and bound "
          f"on the first {min(args.n_complete, len(yt))} ({args.time_limit:g} s each)\n")
    print(f"{'model':10s} {'clean':>6s} {'PGD-40':>7s} {'IBP':>6s} {'CROWN':>6s} {'α-CROWN':>8s} "
          f"{'BaB [attack, cert.]':>22s} {'eval s':>6s}")
    if args.model:
        model = models.load(args.model).eval()
        report(args.model.split("/")[-1], model, Xt, yt, args.n_complete, args.time_limit)
        return
    X, y = load_mnist(args.root, split="train", flatten=True)
    X, y = X[:args.n_train], y[:args.n_train]
    for label, recipe in RECIPES.items():
        torch.manual_seed(0)  # the same initial network for every recipe
        model = models.mlp(784, (200,), 10)
        train(model, X, y, eps=EPS, epochs=args.epochs, batch_size=100, seed=0, progress=False, **recipe)
        report(label, model.eval(), Xt, yt, args.n_complete, args.time_limit)


if __name__ == "__main__":
    main()
