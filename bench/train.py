"""Cost of each training method: seconds per epoch relative to standard training on the same data and model.

    python bench/train.py [--quick] [--data fashion-mnist|mnist|digits] [--root DIR] [--n 4096]
                          [--models mlp,cnn] [--steps 10] [--repeats 3] [--threads 1] [--device cpu|cuda]

Each method trains a fresh copy of the same network for one epoch on the same n examples (ℓ∞, ε = 0.1, full ε
from the first batch, batch 128, Adam); the time of an epoch is the best of ``--repeats`` runs, and the ratio is
against ``standard`` measured in the same run. Expected roughly: fgsm ≈ 2×, pgd-k ≈ k+1×, ibp ≈ 2–3×. The loop
adds one forward pass per batch to the attack-based methods (clean accuracy of the batch), and each attack call
one clean forward pass of its own. ``--quick``: the digits, 2 repeats.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from robustopt import data, models  # noqa: E402
from robustopt.train import train  # noqa: E402

EXPECTED = {"standard": "1", "fgsm": "≈ 2", "fgsm_rs": "≈ 2", "onestep": "≈ 2", "ibp": "≈ 2–3",
            "crown_ibp": "> ibp"}


def load(name, root, n, flatten):
    if name == "digits":
        X, y = data.load_digits(split="train", flatten=flatten)
    else:
        loader = data.load_mnist if name == "mnist" else data.load_fashion_mnist
        X, y = loader(root=root, split="train", flatten=flatten)
    return X[:n], y[:n]


def build(kind, X):
    torch.manual_seed(0)
    if kind == "mlp":
        return models.mlp(X[0].size, (256, 256), 10)
    return models.cnn_small(1, X.shape[-1], 10)


def methods(steps):
    return [("standard", "standard", {}), ("fgsm", "fgsm", {}), ("fgsm_rs", "fgsm_rs", {}),
            ("onestep", "onestep", {}), (f"pgd-{steps}", "pgd", {"steps": steps}),
            (f"trades-{steps}", "trades", {"steps": steps}), ("ibp", "ibp", {}),
            ("crown_ibp", "crown_ibp", {"crown_weight": 1.0})]  # full CROWN-IBP (its ramp starts there)


def seconds_per_epoch(kind, X, y, method, options, repeats, device):
    best = float("inf")
    for _ in range(repeats):
        model = build(kind, X)
        history = train(model, X, y, method=method, eps=0.1, epochs=1, eps_ramp=None, progress=False,
                        device=device, **options)
        best = min(best, history["seconds_per_epoch"][0])
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="fashion-mnist", choices=("fashion-mnist", "mnist", "digits"))
    parser.add_argument("--root", default=None, help="folder with the IDX files (MNIST / Fashion-MNIST)")
    parser.add_argument("--n", type=int, default=4096, help="training examples per epoch")
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--steps", type=int, default=10, help="k of pgd-k and trades-k")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="the digits, 2 repeats")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.data, args.repeats = "digits", 2
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {args.device}; data {args.data}; "
          f"one epoch, best of {args.repeats}; l_inf eps = 0.1, batch 128")
    results = {}
    for kind in args.models.split(","):
        X, y = load(args.data, args.root, args.n, flatten=(kind == "mlp"))
        rows = {}
        for label, method, options in methods(args.steps):
            rows[label] = seconds_per_epoch(kind, X, y, method, options, args.repeats, args.device)
        base = rows["standard"]
        print(f"\n{kind} on {len(y)} examples ({tuple(X.shape[1:])} inputs)\n")
        print("| method | s / epoch | × standard | expected |")
        print("| --- | ---: | ---: | --- |")
        for label, seconds in rows.items():
            expected = EXPECTED.get(label, f"≈ {args.steps + 1}" if label.split("-")[0] in ("pgd", "trades") else "")
            print(f"| {label} | {seconds:.3f} | {seconds / base:.2f} | {expected} |")
        results[kind] = rows
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "threads": torch.get_num_threads(),
                                               "torch": torch.__version__, "seconds_per_epoch": results,
                                               "time": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))


if __name__ == "__main__":
    main()
