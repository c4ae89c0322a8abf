"""Chapter 1: adversarial examples with FGSM and PGD, untargeted and targeted.

Trains a small network, attacks its test images inside the ℓ∞ ball of radius eps (intersected with the pixel box
[0, 1]), prints what each attack achieves, and saves a picture of clean images, adversarial ones and the
perturbations.

    python examples/01_adversarial_examples.py                       # embedded 8×8 digits, a few seconds
    python examples/01_adversarial_examples.py --data mnist --root DIR   # MNIST IDX files in DIR, cnn_small

Every adversarial point is a real input in the ball, so its margin f_y - max_{j != y} f_j is an upper bound on the
smallest margin over the ball: attacks show that a model is not robust, they never prove that it is.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from robustopt import models
from robustopt.attacks import evaluate_robustness, fgsm, pgd
from robustopt.data import load_digits, load_mnist


def load(data, root, train_size):
    """(X_train, y_train, X_test, y_test, side) as images (n, 1, side, side)."""
    if data == "digits":
        (X, y), (Xt, yt) = (load_digits(split=s, flatten=False) for s in ("train", "test"))
    else:
        (X, y), (Xt, yt) = (load_mnist(root, split=s, flatten=False) for s in ("train", "test"))
    X, y = X[:train_size], y[:train_size]
    return X, y, Xt, yt, X.shape[-1]


def attack_table(model, x, y, target, eps, seed):
    """Each attack on the same batch: (name, result, goal reached)."""
    runs = {
        "FGSM": fgsm(model, x, y, eps),
        "PGD-40 (cross-entropy)": pgd(model, x, y, eps, seed=seed),
        "PGD-40 (margin loss)": pgd(model, x, y, eps, loss="margin", seed=seed),
        "FGSM targeted": fgsm(model, x, y, eps, targeted=target),
        "PGD-40 targeted": pgd(model, x, y, eps, targeted=target, seed=seed),
    }
    print(f"\nattacks on {len(x)} correctly classified test images, l_inf eps = {eps}:")
    print(f"  {'attack':24s} {'success rate':>12s} {'accuracy':>9s} {'median margin':>14s}")
    for name, result in runs.items():
        with torch.no_grad():
            accuracy = (model(result.x_adv).argmax(1) == y).float().mean().item()
        print(f"  {name:24s} {result.success_rate:12.3f} {accuracy:9.3f} {result.margin.median().item():14.3f}")
    print("  (targeted rows: success = the target class wins; accuracy = still classified correctly)")
    return runs


def save_picture(path, model, x, y, target, runs, side, count=6):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("saving the picture needs matplotlib: pip install 'robustopt[plot]'")
    columns = [("clean", x), ("FGSM", runs["FGSM"].x_adv), ("PGD", runs["PGD-40 (margin loss)"].x_adv),
               ("PGD targeted", runs["PGD-40 targeted"].x_adv)]
    fig, axes = plt.subplots(count, len(columns) + 1, figsize=(2.0 * (len(columns) + 1), 2.1 * count))
    with torch.no_grad():
        predictions = [model(images[:count]).argmax(1) for _, images in columns]
    for row in range(count):
        for col, ((name, images), predicted) in enumerate(zip(columns, predictions)):
            ax = axes[row, col]
            ax.imshow(images[row].reshape(side, side).cpu(), cmap="gray", vmin=0, vmax=1)
            guess = predicted[row].item()
            title, fooled = f"{name}\npredicted {guess}", guess != y[row].item()
            if name == "clean":
                title = f"clean (label {y[row].item()})\npredicted {guess}"
            elif name == "PGD targeted":
                title, fooled = f"PGD to {target[row].item()}\npredicted {guess}", guess == target[row].item()
            ax.set_title(title, fontsize=8, color="tab:red" if fooled else "black")
            ax.axis("off")
        delta = (columns[2][1][row] - x[row]).reshape(side, side).cpu()
        ax = axes[row, -1]
        bound = max(delta.abs().max().item(), 1e-12)
        ax.imshow(delta, cmap="seismic", vmin=-bound, vmax=bound)
        ax.set_title(f"PGD perturbation (red +, blue -)\nmax |δ| = {delta.abs().max().item():.2f}", fontsize=8)
        ax.axis("off")
    fig.suptitle("Adversarial examples in the l_inf ball ∩ [0, 1] (red title: the attack reached its goal)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=("digits", "mnist"), default="digits")
    parser.add_argument("--root", default=None, help="folder with the MNIST IDX files (default: $ROBUSTOPT_DATA)")
    parser.add_argument("--eps", type=float, default=None, help="l_inf radius (default 0.15 digits, 0.1 MNIST)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 30 digits, 2 MNIST)")
    parser.add_argument("--train-size", type=int, default=10000, help="training images used (MNIST: first N)")
    parser.add_argument("--n", type=int, default=500, help="test images to attack")
    parser.add_argument("--out", default="adversarial_examples.png", help="where to save the picture")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest for small models)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    try:
        X, y, Xt, yt, side = load(args.data, args.root, args.train_size)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
    eps = args.eps if args.eps is not None else (0.15 if args.data == "digits" else 0.1)
    if args.data == "digits":
        model, name, epochs = models.mlp(side * side, (64, 64), 10), "MLP 64-64-64-10", args.epochs or 30
    else:
        model, name, epochs = models.cnn_small(1, side, 10), "cnn_small", args.epochs or 2
    history = models.fit(model, X, y, epochs=epochs, lr=3e-3, batch_size=64, seed=args.seed)
    device = history["device"]
    Xt_t, yt_t = torch.as_tensor(Xt).to(device), torch.as_tensor(yt).to(device)
    with torch.no_grad():
        correct = model(Xt_t).argmax(1) == yt_t
    print(f"{args.data}: trained {name}, {epochs} epochs on {len(X)} images ({device}, {history['seconds']:.1f} s); "
          f"clean test accuracy {correct.float().mean().item():.4f}")

    x, labels = Xt_t[correct][: args.n], yt_t[correct][: args.n]
    target = (labels + 1) % 10
    runs = attack_table(model, x, labels, target, eps, args.seed)

    sweep = min(len(Xt), 500)
    print(f"\nrobust accuracy (an upper bound) of the first {sweep} test images versus eps, PGD-40, margin loss:")
    for radius in (eps / 2, eps, 2 * eps):
        report = evaluate_robustness(model, Xt[:sweep], yt[:sweep], attack="pgd", eps=radius, loss="margin",
                                     seed=args.seed, progress=False)
        print(f"  eps = {radius:.3f}: {report['robust_accuracy']:.4f}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_picture(out, model, x, labels, target, runs, side)
    print(f"\nsaved {out} ({time.perf_counter() - start:.1f} s in all)")


if __name__ == "__main__":
    main()
