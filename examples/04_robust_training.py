"""Chapter 4: adversarial versus certified training.

Trains the same network with each method of ``robustopt.train`` and puts, side by side, what each buys:

- clean accuracy on the test split;
- PGD robust accuracy: examples an attack could not break (an upper bound on the true robust accuracy);
- certified accuracy: examples whose every margin has a proven positive lower bound over the ball (IBP and CROWN,
  in float64; a lower bound on the true robust accuracy).

    python examples/04_robust_training.py                                # embedded 8×8 digits, about a minute
    python examples/04_robust_training.py --data mnist --root DIR        # MNIST IDX files in DIR (a subset)
    python examples/04_robust_training.py --data fashion-mnist [--root DIR]

What to look for: standard training leaves the smallest robust and certified accuracy; PGD and TRADES training
raise the PGD column (TRADES trades clean accuracy for robustness as β grows); only the certified methods (IBP,
CROWN-IBP) make the certified columns large, usually at some cost in clean accuracy. The full table of the
training issue (more epochs, restarts, alpha-CROWN and LP columns, Fashion-MNIST CNNs) comes from
``python bench/train_results.py``.
"""
from __future__ import annotations

import argparse
import time

import torch

from robustopt import models
from robustopt.data import load_digits, load_fashion_mnist, load_mnist
from robustopt.train import evaluate, train

METHODS = [  # (label, method, options)
    ("standard", "standard", {}),
    ("fgsm_rs", "fgsm_rs", {}),
    ("pgd-10", "pgd", {"steps": 10}),
    ("trades β=1", "trades", {"beta": 1.0}),
    ("trades β=6", "trades", {"beta": 6.0}),
    ("onestep", "onestep", {}),
    ("ibp", "ibp", {}),
    ("crown_ibp", "crown_ibp", {}),
]
SETTINGS = {  # the digits train in seconds; the 28×28 sets on a subset, so that the script stays short
    "digits": dict(n_train=None, n_test=None, epochs=20, hidden=(128, 128)),
    "mnist": dict(n_train=3000, n_test=300, epochs=6, hidden=(256, 256)),
    "fashion-mnist": dict(n_train=3000, n_test=300, epochs=6, hidden=(256, 256)),
}


def load(name, root, n_train, n_test):
    """Flat images in [0, 1]: (X_train, y_train, X_test, y_test)."""
    if name == "digits":
        (X, y), (Xt, yt) = (load_digits(split=s) for s in ("train", "test"))
    else:
        loader = load_mnist if name == "mnist" else load_fashion_mnist
        (X, y), (Xt, yt) = (loader(root, split=s) for s in ("train", "test"))
    return X[:n_train], y[:n_train], Xt[:n_test], yt[:n_test]


def main():
    parser = argparse.ArgumentParser(description="adversarial versus certified training")
    parser.add_argument("--data", default="digits", choices=tuple(SETTINGS))
    parser.add_argument("--root", default=None, help="folder with the IDX files (MNIST / Fashion-MNIST)")
    parser.add_argument("--eps", type=float, default=0.1, help="l_inf radius, for training and evaluation")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = SETTINGS[args.data]
    X, y, Xt, yt = load(args.data, args.root, cfg["n_train"], cfg["n_test"])
    print(f"{args.data}: MLP {X.shape[1]}-{'-'.join(map(str, cfg['hidden']))}-10 trained on {len(y)} images for "
          f"{cfg['epochs']} epochs, l_inf eps = {args.eps}; evaluated on {len(yt)} test images\n")
    print(f"{'method':12s} {'clean':>6s} {'PGD-20':>7s} {'IBP':>6s} {'CROWN':>6s} {'train s':>8s}")
    for label, method, options in METHODS:
        torch.manual_seed(0)  # the same initial network for every method
        model = models.mlp(X.shape[1], cfg["hidden"], 10)
        start = time.perf_counter()
        # ibp and crown_ibp ramp eps up from 0 over the first half of training (the default "auto" ramp)
        train(model, X, y, method=method, eps=args.eps, epochs=cfg["epochs"], batch_size=64, lr_schedule="cosine",
              progress=False, **options)
        seconds = time.perf_counter() - start
        result = evaluate(model, Xt, yt, args.eps, pgd_steps=20, certify_methods=("ibp", "crown"))
        cert = result["certified_accuracy"]
        print(f"{label:12s} {result['clean_accuracy']:6.3f} {result['pgd_accuracy']:7.3f} {cert['ibp']:6.3f} "
              f"{cert['crown']:6.3f} {seconds:8.1f}", flush=True)
    print("\ncertified <= PGD <= clean on every row: a certificate is a proof, an attack only a witness.")


if __name__ == "__main__":
    main()
