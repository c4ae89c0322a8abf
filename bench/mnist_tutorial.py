"""The Kolter–Madry tutorial's MNIST table (chapters 3–4), reproduced on full MNIST and certified by our verifiers.

    python bench/mnist_tutorial.py train MODEL [--root DIR] [--out DIR] [--threads T]     # one model, hours on CPU
    python bench/mnist_tutorial.py evaluate [--models ...] [--n 10000] [--n-certify 10000] [--n-ensemble 10000]
                                            [--n-complete 1000] [--time-limit 30]
    python bench/mnist_tutorial.py table                                                   # markdown from results

MODEL is one of ``standard``, ``pgd``, ``ibp``, ``crown_ibp`` (the tutorial's CNN, :func:`robustopt.models.cnn_tutorial`)
or ``mlp_standard``, ``mlp_pgd`` (its two-layer MLP, 784-200-10). ℓ∞, ε = 0.1, the box [0, 1]. ``train`` writes a
checkpoint per epoch (an interrupted run started again resumes from the last one), then
``OUT/MODEL.pt`` and ``OUT/MODEL.json`` (the history: loss, accuracy, ε and learning rate per epoch, seconds);
``evaluate`` writes ``OUT/MODEL.eval.json`` (clean, PGD-40, ensemble-attack and certified error per method, with
their seconds and how many images each certifier ran on: they run as a cascade, each on the images still open;
the attacks' results are kept in ``OUT/MODEL.attacks.json`` (in chunks of 500 images) and each example's certificate is journaled in
``OUT/MODEL.METHOD.jsonl`` as it is found, so an interrupted evaluation started again computes only the rest, and
the seconds then count this run's share);
``table`` prints the README table against the tutorial's figures. OUT defaults to ``.bench/mnist``. The short
version (the tutorial's MLP, minutes on CPU) is ``examples/05_mnist_tutorial.py``, which also evaluates any model
written here (``--model OUT/pgd.pt --arch cnn``).

Recipes (the tutorial's, except where noted):

- ``standard`` and ``pgd``: SGD without momentum, lr 0.1, ×0.1 after epoch 5 of 10, batch 100. PGD training uses
  10 steps of 2.5ε/10 from a random start; the tutorial uses 20 steps of 0.01 from the centre. Deviation: half the
  compute on 2 CPU cores, and Madry et al.'s random start.
- ``ibp``: the tutorial's robust-bound training: the cross-entropy of the interval bounds' worst-case logits only
  (κ = 0), batch 100, 25 epochs with ε growing 0 → 0.1 over the first 10 (linearly, per batch; the tutorial
  steps it per epoch: 0, 1e-4, 1e-3, 0.01, 0.01, 0.05 ×5). Deviation: Adam lr 1e-3 instead of SGD, ×0.1 after
  epoch 20 (stability of the bound loss; not tuned).
- ``crown_ibp``: Zhang et al.'s CROWN-IBP with their MNIST schedule shape (ε ramp over the first 40% of epochs,
  κ 1 → 0, CROWN weight 1 → 0), 25 epochs, Adam 1e-3, ×0.1 after epoch 20: our stand-in for Wong–Kolter training.

The reference runs (``.bench/mnist``) of ``pgd`` and ``ibp`` were started before checkpoints carried their state and
were interrupted after epochs 3 and 9; they went on from those weights with the shuffling generator's state
replayed exactly (seed 0, one permutation per epoch). SGD without momentum has no other state, so ``pgd`` is the
uninterrupted run; ``ibp`` restarted Adam's moments at epoch 9 (a deviation).
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

EPS = 0.1


def _step_after(epoch):
    """lr factor: 1 before ``epoch``, 0.1 from it on (counted in fractional epochs)."""
    return lambda t, epochs: 1.0 if t < epoch else 0.1


RECIPES = {  # model: (architecture, train() keyword arguments)
    "standard": ("cnn", dict(method="standard", epochs=10, optimizer="sgd", lr=0.1, momentum=0.0,
                             lr_schedule=_step_after(5))),
    "pgd": ("cnn", dict(method="pgd", epochs=10, optimizer="sgd", lr=0.1, momentum=0.0,
                        lr_schedule=_step_after(5), steps=10)),
    "ibp": ("cnn", dict(method="ibp", epochs=25, optimizer="adam", lr=1e-3, lr_schedule=_step_after(20),
                        eps_ramp=(0, 10), kappa=(0.0, 0.0))),
    "crown_ibp": ("cnn", dict(method="crown_ibp", epochs=25, optimizer="adam", lr=1e-3,
                              lr_schedule=_step_after(20), eps_ramp=(0, 10), kappa=(1.0, 0.0),
                              crown_weight=(1.0, 0.0))),
    "mlp_standard": ("mlp", dict(method="standard", epochs=10, optimizer="sgd", lr=0.1, momentum=0.0,
                                 lr_schedule=_step_after(5))),
    "mlp_pgd": ("mlp", dict(method="pgd", epochs=10, optimizer="sgd", lr=0.1, momentum=0.0,
                            lr_schedule=_step_after(5), steps=10)),
}


def build(arch):
    torch.manual_seed(0)
    return models.cnn_tutorial(1, 28, 10) if arch == "cnn" else models.mlp(784, (200,), 10)


def load(root, split, arch):
    return data.load_mnist(root=root, split=split, flatten=arch == "mlp")


def run_train(args):
    arch, recipe = RECIPES[args.model]
    X, y = load(args.root, "train", arch)
    model = build(arch)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tic = time.time()
    history = train(model, X, y, eps=EPS, batch_size=100, device=args.device, seed=0, progress=True,
                    checkpoint=str(out / f"{args.model}.epoch{{epoch}}.pt"), resume=True, **recipe)
    models.save(model, out / f"{args.model}.pt")
    history.pop("options", None)
    history.update(model=args.model, wall_seconds=time.time() - tic, threads=torch.get_num_threads(),
                   recipe={k: (v if isinstance(v, (int, float, str, tuple, list)) else repr(v))
                           for k, v in recipe.items()})
    (out / f"{args.model}.json").write_text(json.dumps(history, indent=1, default=str))
    print(json.dumps({k: history[k] for k in ("model", "loss", "accuracy", "seconds")}, default=str))


TUTORIAL = {  # the tutorial's (and Wong & Kolter's) test errors in %, for the table
    "standard": {"pgd": 71.0},
    "pgd": {"clean": 0.85, "pgd": 2.86},
    "ibp": {"clean": 5.15, "pgd": 7.79, "ibp": 9.67},
    "crown_ibp": {"clean": 1.8, "pgd": 4.1, "certified": 5.8},
}


ATTACKS = {"pgd": dict(attack="pgd", steps=40), "ensemble": dict(attack="ensemble")}


def _attack(label, model, X, y, path, progress, chunk=500):
    """The attack ``label`` (``ATTACKS``) on every image, in chunks of ``chunk`` images, each cached in ``path``
    (JSON, keyed by the chunk's first image) as it finishes: an interrupted evaluation redoes only the chunks it
    had not finished, and a larger ``--n`` reuses the smaller one's. Returns the error, the clean error, the
    seconds and the (n,) list of images it did not break."""
    from robustopt.attacks import evaluate_robustness

    found = json.loads(path.read_text()) if path.exists() else {}
    if found.get("chunk") != chunk:
        found = {"chunk": chunk}
    done = found.setdefault(label, {})
    for start in range(0, len(y), chunk):
        if str(start) in done:
            continue
        tic = time.time()
        res = evaluate_robustness(model, X[start:start + chunk], y[start:start + chunk], eps=EPS, seed=start,
                                  progress=progress, **ATTACKS[label])
        correct = int(round(res["clean_accuracy"] * res["n"]))
        done[str(start)] = {"seconds": time.time() - tic, "clean_correct": correct,
                            "robust": [int(v) for v in res["robust"]]}
        path.write_text(json.dumps(found))
    parts = [done[str(start)] for start in range(0, len(y), chunk)]
    if any(len(part["robust"]) != min(chunk, len(y) - start) for part, start in zip(parts, range(0, len(y), chunk))):
        raise ValueError(f"{path}: a cached chunk of {label} has another length; --n must be a multiple of {chunk}")
    robust = [v for part in parts for v in part["robust"]]
    return {"seconds": sum(part["seconds"] for part in parts), "robust": robust,
            "clean_error": 100.0 * (1 - sum(part["clean_correct"] for part in parts) / len(y)),
            "error": 100.0 * (1 - sum(robust) / len(y))}


def _certify_cascade(name, model, X, y, candidates, args, report):
    """IBP on every image, CROWN on the ``candidates`` (the images PGD-40 did not break) IBP leaves open,
    alpha-CROWN on those CROWN leaves open, branch and bound on the first ``--n-complete`` alpha-CROWN leaves open.
    Fills ``report``; returns the certified mask per method (a method's mask holds the images it or an earlier
    step proved) and the mask of images branch and bound falsified."""
    from robustopt.verify import certify

    n = len(y)
    certified, falsified = {}, torch.zeros(n, dtype=torch.bool)
    plan = [("ibp", args.n_certify, torch.ones(n, dtype=torch.bool), None),
            ("crown", args.n_certify, candidates, "ibp"),
            ("alpha-crown", args.n_certify, candidates, "crown"),
            ("bab", args.n_complete, candidates, "alpha-crown")]
    for method, limit, among, after in plan:
        size = min(limit, n)
        if size <= 0:
            continue
        done = certified[after][:size].clone() if after in certified else torch.zeros(size, dtype=torch.bool)
        todo = torch.nonzero(among[:size] & ~done).flatten()
        tic = time.time()
        res = certify(model, X[todo.numpy()], y[todo.numpy()], EPS, method=method, progress=args.progress,
                      time_limit=args.time_limit if method == "bab" else None, attack=method == "bab",
                      out=Path(args.out) / f"{name}.{method}.jsonl", resume=True) if len(todo) else None
        proved = done.clone()
        if res is not None:
            proved[todo] = torch.as_tensor(res.status == "certified")
            falsified[todo[torch.as_tensor(res.status == "falsified")]] = True
            report.setdefault("counts", {})[method] = res.counts
        certified[method] = proved
        report["seconds"][method] = time.time() - tic
        report["error"][method] = 100.0 * (1 - float(proved.double().mean()))
        report["n_by"][method], report["n_run"][method] = size, len(todo)
    return certified, falsified


def run_evaluate(args):
    """Clean, PGD-40, ensemble and certified test error of each trained model (``OUT/MODEL.eval.json``).

    Order: PGD-40 on every image; the certifiers as a cascade, each on the images still open (IBP on every image,
    CROWN on the images PGD-40 did not break that IBP leaves open, alpha-CROWN on those CROWN leaves open: its
    bound is never below CROWN's, as it starts from CROWN's slopes and keeps the best; branch and bound on the
    first ``--n-complete`` alpha-CROWN leaves open); then the ensemble attack, the longest step (about 650
    gradient steps per robust image), last. ``OUT/MODEL.eval.json`` is written before the ensemble and again after
    it. A method's certified error counts the images it or an earlier step of the cascade proved: the CROWN column
    is IBP-or-CROWN (CROWN is not always tighter than IBP; on an IBP-trained CNN it costs seconds per image, and
    IBP alone settles most images there). Soundness check: no certifier may prove an image an attack broke."""
    out = Path(args.out)
    for name in args.models.split(","):
        arch, _ = RECIPES[name]
        path = Path(args.model_file) if args.model_file else out / f"{name}.pt"
        model = models.load(path).eval()
        X, y = load(args.root, "test", arch)
        X, y = X[:args.n], y[:args.n]
        n = len(y)
        report = {"model": name, "file": str(path), "n": n, "eps": EPS, "threads": torch.get_num_threads(),
                  "seconds": {}, "error": {}, "n_by": {}, "n_run": {}}
        unbroken = torch.ones(n, dtype=torch.bool)

        def add_attack(label, size):
            attack = _attack(label, model, X[:size], y[:size], out / f"{name}.attacks.json", args.progress)
            report["seconds"][label], report["error"][label], report["n_by"][label] = \
                attack["seconds"], attack["error"], size
            if size == n:
                report["error"]["clean"] = attack["clean_error"]
            unbroken[:size].logical_and_(torch.tensor(attack["robust"], dtype=torch.bool))

        def check_and_write(certified, falsified):
            for method, proved in certified.items():
                wrong = int((proved & ~unbroken[:len(proved)]).sum())
                if wrong:
                    raise AssertionError(f"{name}: {method} certified {wrong} examples an attack broke")
            if "bab" in certified:  # the bracket on the first n: [attack error, certified error]
                size = report["n_by"]["bab"]
                report["error"]["bab_attack"] = 100.0 * float((~unbroken[:size] | falsified[:size]).double().mean())
            (out / f"{name}.eval.json").write_text(json.dumps(report, indent=1))

        add_attack("pgd", n)
        certified, falsified = _certify_cascade(name, model, X, y, unbroken.clone(), args, report)
        check_and_write(certified, falsified)
        if args.n_ensemble > 0:
            add_attack("ensemble", min(args.n_ensemble, n))
        check_and_write(certified, falsified)
        print(json.dumps(report))


def run_table(args):
    """The README table from the evaluation files, beside the tutorial's figures."""
    out = Path(args.out)
    head = ("| model | clean | PGD-40 | ensemble | IBP | CROWN | α-CROWN | BaB bracket (first n) | tutorial |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---|")
    print(head)
    for name in RECIPES:
        path = out / f"{name}.eval.json"
        if not path.exists():
            continue
        rep = json.loads(path.read_text())
        err, n_by = rep["error"], rep["n_by"]
        cell = lambda k: "–" if err.get(k) is None else f"{err[k]:.2f}" + ("" if n_by.get(k, rep["n"]) == rep["n"]
                                                                          else f" (n={n_by[k]})")
        bab = "–" if "bab" not in err else f"[{err['bab_attack']:.2f}, {err['bab']:.2f}] (n={n_by['bab']})"
        ref = ", ".join(f"{k} {v}" for k, v in TUTORIAL.get(name, {}).items())
        print(f"| {name} | {cell('clean')} | {cell('pgd')} | {cell('ensemble')} | {cell('ibp')} | {cell('crown')} | "
              f"{cell('alpha-crown')} | {bab} | {ref or '–'} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)
    p_train = sub.add_parser("train")
    p_train.add_argument("model", choices=sorted(RECIPES))
    p_eval = sub.add_parser("evaluate")
    p_eval.add_argument("--models", default="standard,pgd,ibp,crown_ibp")
    p_eval.add_argument("--model-file", default=None, help="evaluate this file (e.g. an epoch checkpoint) instead")
    p_eval.add_argument("--n", type=int, default=10000, help="test images for the attacks")
    p_eval.add_argument("--n-ensemble", type=int, default=10000,
                        help="test images for the ensemble attack (a multiple of 500; 0: none)")
    p_eval.add_argument("--n-certify", type=int, default=10000, help="test images for IBP, CROWN, alpha-CROWN")
    p_eval.add_argument("--n-complete", type=int, default=1000, help="test images for branch and bound")
    p_eval.add_argument("--time-limit", type=float, default=30.0, help="seconds per image for branch and bound")
    p_eval.add_argument("--progress", action="store_true")
    p_table = sub.add_parser("table")
    for p in (p_train, p_eval, p_table):
        p.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "mnist"))
        p.add_argument("--out", default=str(REPO / ".bench" / "mnist"))
        p.add_argument("--threads", type=int, default=None)
        p.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    {"train": run_train, "evaluate": run_evaluate, "table": run_table}[args.stage](args)


if __name__ == "__main__":
    main()
