"""Issue "training", results to reproduce: adversarial versus certified training, one table per data set and model.

    python bench/train_results.py --data digits                          # MLP, all 1,347 training digits
    python bench/train_results.py --data fashion-mnist --models mlp,cnn  # a training subset (see --n-train)
    python bench/train_results.py --quick                                # digits, fewer epochs: a smoke run

For each method (standard, fgsm_rs, pgd, trades with two β, onestep, ibp, crown_ibp) a fresh network with the same
initialization is trained with the same optimizer, epochs and batches (ℓ∞, ε = 0.1 by default), then evaluated on
the test split: clean accuracy, PGD-40 robust accuracy with restarts (an upper bound on the true robust accuracy)
and certified accuracy (lower bounds, float64): IBP on every evaluated example, CROWN too (the first 100 only on the
CNN), alpha-CROWN and the LP on the first examples (the table says how many). Hyper-parameters are fixed in CONFIGS
below from the literature's defaults, never chosen on the test split. Every certificate is checked per example
against the attack (a certified example the attack broke would be a soundness bug) and against the bound chain
(the LP certifies whatever IBP or CROWN does, alpha-CROWN whatever CROWN does); violations are printed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from robustopt import data, models  # noqa: E402
from robustopt.train import evaluate, train  # noqa: E402
from robustopt.verify import get_method  # noqa: E402

# (row label, method, options)
ROWS = [
    ("standard", "standard", {}),
    ("fgsm_rs", "fgsm_rs", {}),
    ("pgd-10", "pgd", {"steps": 10}),
    ("trades β=1", "trades", {"beta": 1.0, "steps": 10}),
    ("trades β=6", "trades", {"beta": 6.0, "steps": 10}),
    ("onestep", "onestep", {}),
    ("ibp", "ibp", {}),
    ("crown_ibp", "crown_ibp", {}),
]
# training and evaluation settings per (data set, model), fixed from the literature's defaults and the time a 2-core
# machine allows (28×28 sets: a training subset); subsets: certification methods run on the first n test examples
# only (None: all).
# On the CNN, bounds beyond IBP cost most of the run (CROWN's intermediate bounds through the convolutions,
# alpha-CROWN's iterations up to --time-limit per example): they run on small subsets.
DIGITS = dict(n_train=None, n_eval=None, batch_size=64, lr=1e-3, restarts=5)
IMAGES = dict(n_train=10000, n_eval=1000, batch_size=128, lr=1e-3, restarts=3)
CONFIGS = {
    ("digits", "mlp"): dict(DIGITS, epochs=40, hidden=(128, 128), subsets={"alpha-crown": None, "lp": 100}),
    ("digits", "cnn"): dict(DIGITS, epochs=40, hidden=None, subsets={"alpha-crown": None, "lp": 100}),
    ("images", "mlp"): dict(IMAGES, epochs=20, hidden=(256, 256), subsets={"alpha-crown": 200, "lp": 50}),
    ("images", "cnn"): dict(IMAGES, n_train=5000, n_eval=500, epochs=10, hidden=None,
                            subsets={"crown": 100, "alpha-crown": 20, "lp": 20}),
}
DEFAULT_MODELS = {"digits": "mlp", "fashion-mnist": "mlp,cnn", "mnist": "mlp,cnn"}
QUICK = dict(epochs=10, n_eval=200, restarts=1, subsets={"crown": 100, "alpha-crown": 50, "lp": 10})


def settings(args, kind):
    """The configuration of one (data set, model) run, with the command line's overrides."""
    cfg = dict(CONFIGS[("digits" if args.data == "digits" else "images", kind)], **(QUICK if args.quick else {}))
    for key in ("n_train", "epochs"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    return cfg


def load(name, root, flatten, n_train, n_eval):
    """(X, y, X_test, y_test); the first n_train training and n_eval test examples (None: all)."""
    if name == "digits":
        splits = [data.load_digits(split=s, flatten=flatten) for s in ("train", "test")]
    else:
        loader = data.load_mnist if name == "mnist" else data.load_fashion_mnist
        splits = [loader(root=root, split=s, flatten=flatten) for s in ("train", "test")]
    (X, y), (Xt, yt) = splits
    return X[:n_train], y[:n_train], Xt[:n_eval], yt[:n_eval]


def build(kind, X, hidden, seed):
    torch.manual_seed(seed)
    if kind == "mlp":
        return models.mlp(int(np.prod(X.shape[1:])), hidden, 10)
    if kind != "cnn":
        raise SystemExit(f"unknown model {kind!r}: use mlp or cnn")
    return models.cnn_small(1, X.shape[-1], 10)


def certify_plan(cfg, n_eval):
    """IBP, CROWN, alpha-CROWN and LP (when this version has it), each on all or the first examples."""
    plan = []
    for method in ("ibp", "crown", "alpha-crown", "lp"):
        try:
            get_method(method)
        except ValueError:
            print(f"(the {method} method is not available in this version: its column is left out)")
            continue
        n = cfg["subsets"].get(method)
        plan.append((method, n_eval if n is None else min(n, n_eval)))
    return plan


# per example, a certificate of the left method implies one of each method on the right (DESIGN.md's bound chain:
# the LP uses the tightest of the IBP and CROWN intermediate bounds, alpha-CROWN starts from CROWN)
DOMINATES = {"lp": ("ibp", "crown"), "alpha-crown": ("crown",)}


def soundness_problems(result):
    """Examples certified by some method that the attack broke (must be none), and examples where a method
    failed to certify what a method it dominates certified (a bug in one of the two bounds)."""
    problems = {}
    certified = result["certified"]
    for method, flags in certified.items():
        broken = flags & ~result["pgd_robust"][:len(flags)]
        if broken.any():
            problems[f"{method} certified, PGD broke"] = np.nonzero(broken)[0].tolist()
        for weaker in DOMINATES.get(method, ()):
            if weaker in certified:
                n = min(len(flags), len(certified[weaker]))
                missed = certified[weaker][:n] & ~flags[:n]
                if missed.any():
                    problems[f"{weaker} certified, {method} did not"] = np.nonzero(missed)[0].tolist()
    return problems


def run(args, kind):
    cfg = settings(args, kind)
    X, y, Xt, yt = load(args.data, args.root, kind != "cnn", cfg["n_train"], cfg["n_eval"])
    plan = certify_plan(cfg, len(yt))
    rows = []
    for label, method, options in ROWS:
        if args.methods and label not in args.methods.split(","):
            continue
        model = build(kind, X, cfg["hidden"], args.seed)
        history = train(model, X, y, method=method, eps=args.eps, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                        lr=cfg["lr"], lr_schedule="cosine", device=args.device, seed=args.seed,
                        progress=args.progress, **options)
        result = evaluate(model, Xt, yt, args.eps, pgd_steps=40, pgd_restarts=cfg["restarts"],
                          certify_methods=plan, time_limit=args.time_limit, seed=args.seed, progress=args.progress)
        problems = soundness_problems(result)
        if problems:
            print(f"BOUND CHAIN VIOLATED (a bug): {label}: {problems}")
        rows.append(dict(label=label, method=method, options=options, train_seconds=history["seconds"],
                         final_train_loss=history["loss"][-1], clean=result["clean_accuracy"],
                         pgd=result["pgd_accuracy"], certified=result["certified_accuracy"],
                         certified_n=result["certified_n"], eval_seconds=result["seconds"], soundness=problems))
        print(f"  {label}: clean {rows[-1]['clean']:.3f}, PGD {rows[-1]['pgd']:.3f}, certified "
              f"{ {m: round(v, 3) for m, v in rows[-1]['certified'].items()} } ({history['seconds']:.0f} s)",
              flush=True)
    return dict(model=kind, n_train=len(y), n_eval=len(yt), config=cfg, rows=rows)


def markdown(table, args):
    cfg = table["config"]
    rows = table["rows"]
    methods = list(rows[0]["certified"])
    names = {"ibp": "IBP", "crown": "CROWN", "alpha-crown": "α-CROWN", "lp": "LP"}
    heads = [f"{names.get(m, m)}" + (f" (first {rows[0]['certified_n'][m]})"
                                       if rows[0]["certified_n"][m] < table["n_eval"] else "") for m in methods]
    out = [f"**{args.data}, {table['model']}**: trained on {table['n_train']} examples, {cfg['epochs']} epochs "
           f"(batch {cfg['batch_size']}, Adam lr {cfg['lr']}, cosine), ℓ∞ ε = {args.eps}; evaluated on "
           f"{table['n_eval']} test examples; PGD-40 with {cfg['restarts']} restart(s).", "",
           "| method | clean | PGD-40 | " + " | ".join(f"certified {h}" for h in heads) + " | train s |",
           "| --- | ---: | ---: | " + " | ".join("---:" for _ in heads) + " | ---: |"]
    for r in rows:
        cells = " | ".join(f"{100 * r['certified'][m]:.1f}" for m in methods)
        out.append(f"| {r['label']} | {100 * r['clean']:.1f} | {100 * r['pgd']:.1f} | {cells} | "
                   f"{r['train_seconds']:.0f} |")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="digits", choices=tuple(DEFAULT_MODELS))
    parser.add_argument("--root", default=None, help="folder with the IDX files (MNIST / Fashion-MNIST)")
    parser.add_argument("--models", default=None, help="comma-separated: mlp, cnn (default: per data set)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated row labels to run (default: all), e.g. fgsm_rs,pgd-10")
    parser.add_argument("--n-train", type=int, default=None, help="training examples (default: per data set)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--time-limit", type=float, default=10.0, help="seconds per example (LP, alpha-CROWN)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default=None, help="default: CUDA when available")
    parser.add_argument("--quick", action="store_true", help="fewer epochs and evaluation examples (a smoke run)")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--out", default=None, help="write the tables (markdown) and a .json next to it")
    args = parser.parse_args(argv)
    unknown = set(args.methods.split(",")) - {label for label, _, _ in ROWS} if args.methods else set()
    if unknown:
        parser.error(f"--methods: unknown row(s) {sorted(unknown)}; choose from {[label for label, _, _ in ROWS]}")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    tables = []
    for kind in (args.models or DEFAULT_MODELS[args.data]).split(","):
        print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {args.data} / {kind}: "
              f"{settings(args, kind)}", flush=True)
        tables.append(run(args, kind))
    text = "\n\n".join(markdown(t, args) for t in tables)
    command = "python bench/train_results.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"\n{text}\n\n(made by `{command.strip()}` in {time.perf_counter() - start:.0f} s, "
          f"{torch.get_num_threads()} thread(s))")
    if args.out:
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(
            dict(command=command, threads=torch.get_num_threads(), torch=torch.__version__,
                 tables=tables), indent=1, default=str))


if __name__ == "__main__":
    main()
