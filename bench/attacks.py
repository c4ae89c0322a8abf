"""Benchmark of robustopt.attacks: PGD speed against its physical floor and torchattacks, ensemble strength
against AutoAttack.

    python bench/attacks.py [--quick] [--threads 1] [--device cpu|cuda] [--peer-python PATH]

1. PGD-40 ℓ∞ at batch 512 on a digits MLP (64-128-128-10) and on cnn_small with 28×28 inputs (digits upsampled):
   examples per second and the overhead ratio, PGD time / (40 × one forward+backward of the same batch to the
   input), both the best of several repeats. Goal: <= 1.15.
2. The same attack with torchattacks' PGD (same model, steps, step size, no random start): time ratio and the
   robust accuracy each reaches. Goal: ours not slower, not weaker.
3. attack="ensemble" against AutoAttack's standard evaluation on the trained digits MLP, the same architecture
   PGD-trained (robustopt.train), and a random 64-128-128-10 MLP (labels: its own predictions), ℓ∞ ε = 0.1,
   digits test split. Goal: within +1 point of AutoAttack's robust accuracy in at most a fifth of its time.

Peers (torchattacks, AutoAttack) are never dependencies: they run in another interpreter that has them, found
from --peer-python, then $ROBUSTOPT_PEER_PYTHON, then ../peers/aa-venv/bin/python next to the repository, then
this interpreter. When none has them, their rows say so.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from robustopt import models  # noqa: E402
from robustopt.attacks import evaluate_robustness, pgd  # noqa: E402
from robustopt.data import load_digits  # noqa: E402
from robustopt.train import train as robust_train  # noqa: E402

PEER_SCRIPT = r'''
import json, sys, time
import numpy as np, torch
cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg["repo"])
torch.set_num_threads(cfg["threads"])
from robustopt import models
out = {}
def sync():
    if cfg["device"] == "cuda":
        torch.cuda.synchronize()
for job in cfg["jobs"]:
    model = models.load(job["model"], device=cfg["device"])
    data = np.load(job["data"])
    x = torch.as_tensor(data["x"]).to(cfg["device"]); y = torch.as_tensor(data["y"]).to(cfg["device"])
    if job.get("image_shape"):  # Square attack needs (n, c, h, w); our MLPs flatten their input first
        x = x.reshape(len(x), *job["image_shape"])
    times = []
    try:
        if job["kind"] == "torchattacks-pgd":
            import torchattacks
            from robustopt.attacks import pgd
            attack = torchattacks.PGD(model, eps=job["eps"], alpha=job["alpha"], steps=job["steps"],
                                      random_start=False)
            ours = []
            attack(x, y)  # warm-up
            for _ in range(job["repeats"]):  # alternate theirs and ours, so that load hits both alike
                sync(); start = time.perf_counter(); x_adv = attack(x, y); sync()
                times.append(time.perf_counter() - start)
                sync(); start = time.perf_counter()
                pgd(model, x, y, job["eps"], steps=job["steps"], step_size=job["alpha"], random_start=False)
                sync(); ours.append(time.perf_counter() - start)
            version = torchattacks.__version__
        else:
            from autoattack import AutoAttack
            from robustopt.attacks import evaluate_robustness
            attack = AutoAttack(model, norm="Linf", eps=job["eps"], version="standard", device=cfg["device"],
                                verbose=False, seed=0)
            ours = []
            for turn in ("ours", "theirs", "ours"):  # ours before and after theirs, so that load hits both alike
                sync(); start = time.perf_counter()
                if turn == "ours":
                    evaluate_robustness(model, x, y, attack="ensemble", eps=job["eps"], seed=0, batch_size=len(x),
                                        progress=False)
                else:
                    x_adv = attack.run_standard_evaluation(x, y, bs=len(x))
                sync(); (ours if turn == "ours" else times).append(time.perf_counter() - start)
            version = "git"
        with torch.no_grad():
            robust = (model(x_adv).argmax(1) == y).float().mean().item()
        linf = (x_adv - x).abs().max().item()
        out[job["name"]] = {"seconds": min(times), "robust_accuracy": robust, "linf": linf, "version": version}
        out[job["name"]]["ours_seconds"] = min(ours)
    except ImportError as err:
        out[job["name"]] = {"missing": str(err)}
    except Exception as err:
        import traceback
        where = traceback.extract_tb(err.__traceback__)[-1]
        out[job["name"]] = {"missing": f"peer failed: {type(err).__name__}: {err} ({where.filename}:{where.lineno})"}
print("@@RESULT@@" + json.dumps(out))
'''


# ---------------------------------------------------------------------------------------------- helpers
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_times(functions, repeats, device):
    """Best wall time of each function over ``repeats`` rounds (after a warm-up round); the functions alternate
    within each round, so that a busy machine slows them alike."""
    for fn in functions:
        fn()
    times = [[] for _ in functions]
    for _ in range(repeats):
        for fn, record in zip(functions, times):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            record.append(time.perf_counter() - start)
    return [min(record) for record in times]


def find_peer_python(explicit):
    candidates = [explicit, os.environ.get("ROBUSTOPT_PEER_PYTHON"), str(REPO.parent / "peers/aa-venv/bin/python"),
                  sys.executable]
    for candidate in candidates:
        if not candidate or not Path(candidate).exists():
            continue
        probe = subprocess.run([candidate, "-c", "import torchattacks, autoattack"], capture_output=True)
        if probe.returncode == 0:
            return candidate
    return None


def run_peers(peer_python, jobs, threads, device):
    if peer_python is None:
        return {job["name"]: {"missing": "no interpreter with torchattacks and autoattack (pass --peer-python "
                                         "or set ROBUSTOPT_PEER_PYTHON)"} for job in jobs}
    cfg = {"repo": str(REPO), "threads": threads, "device": device.type, "jobs": jobs}
    proc = subprocess.run([peer_python, "-c", PEER_SCRIPT, json.dumps(cfg)], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@"):])
    message = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {job["name"]: {"missing": f"peer run failed: {message}"} for job in jobs}


def digits_data(side=None):
    """Digits train / test splits; ``side``: upsample the 8×8 images (bilinear) to side×side."""
    splits = []
    for split in ("train", "test"):
        X, y = load_digits(split=split, flatten=side is None)
        if side is not None:
            X = F.interpolate(torch.as_tensor(X), size=(side, side), mode="bilinear", align_corners=False)
            X = X.clamp(0, 1).numpy()
        splits.append((X, y))
    return splits


def batch_of(X, y, n):
    """n examples (repeating the set if needed) as tensors."""
    idx = np.resize(np.arange(len(X)), n)
    return torch.as_tensor(X[idx]), torch.as_tensor(y[idx])


def trained(build, X, y, epochs, device):
    """A model from ``build()`` (seeded initialization) trained with Adam."""
    torch.manual_seed(0)
    model = build()
    models.fit(model, X, y, epochs=epochs, lr=3e-3, batch_size=64, progress=False, device=device, seed=0)
    return model.eval()


# ---------------------------------------------------------------------------------------------- sections
def speed_section(name, model, x, y, eps, steps, repeats, device, tmp, jobs):
    """Our PGD against 40 forward+backward passes; registers the torchattacks job for the same batch."""
    x, y = x.to(device), y.to(device)
    leaf = x.clone().requires_grad_(True)

    def forward_backward_block():
        for _ in range(steps):
            loss = F.cross_entropy(model(leaf), y, reduction="sum")
            torch.autograd.grad(loss, leaf)

    floor, ours = best_times([forward_backward_block, lambda: pgd(model, x, y, eps, steps=steps, seed=0)], repeats,
                             device)
    alpha = 2.5 * eps / steps
    like = pgd(model, x, y, eps, steps=steps, step_size=alpha, random_start=False)
    path_model, path_data = tmp / f"{name}.pt", tmp / f"{name}.npz"
    models.save(model, path_model)
    np.savez(path_data, x=x.cpu().numpy(), y=y.cpu().numpy())
    jobs.append({"name": f"pgd-{name}", "kind": "torchattacks-pgd", "model": str(path_model), "data": str(path_data),
                 "eps": eps, "alpha": alpha, "steps": steps, "repeats": repeats})
    return {"batch": len(x), "floor_seconds": floor, "pgd_seconds": ours, "ratio": ours / floor,
            "examples_per_second": len(x) / ours, "like_robust_accuracy": 1 - like.success.float().mean().item()}


def strength_section(name, model, X, y, eps, device, tmp, jobs):
    start = time.perf_counter()
    out = evaluate_robustness(model, X, y, attack="ensemble", eps=eps, seed=0, batch_size=len(X), progress=False)
    seconds = time.perf_counter() - start
    single = evaluate_robustness(model, X, y, attack="pgd", eps=eps, seed=0, batch_size=len(X), progress=False)
    path_model, path_data = tmp / f"{name}.pt", tmp / f"{name}.npz"
    models.save(model, path_model)
    np.savez(path_data, x=X, y=y)
    jobs.append({"name": f"aa-{name}", "kind": "autoattack", "model": str(path_model), "data": str(path_data),
                 "eps": eps, "image_shape": [1, 8, 8]})
    return {"n": len(X), "clean": out["clean_accuracy"], "ensemble": out["robust_accuracy"], "seconds": seconds,
            "pgd_ce": single["robust_accuracy"], "fooled_by": out["fooled_by"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, a smaller CNN batch, shorter training")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, here and in the peer (default 1)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peer-python", default=None, help="interpreter with torchattacks and autoattack")
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats (default 7, quick 3)")
    parser.add_argument("--eps", type=float, default=0.1, help="ℓ∞ radius (default 0.1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    repeats = args.repeats or (3 if args.quick else 7)
    dtype = torch.float32
    print(f"robustopt attacks benchmark: torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"device {device}, dtype {dtype}, repeats {repeats} (best of)")
    peer = find_peer_python(args.peer_python)
    print(f"peer interpreter: {peer or 'none found (torchattacks / AutoAttack rows are skipped)'}")

    (X8, y8), (Xt8, yt8) = digits_data()
    (X28, y28), _ = digits_data(side=28)
    mlp = trained(lambda: models.mlp(64, (128, 128), 10), X8, y8, 10 if args.quick else 30, device)
    cnn = trained(lambda: models.cnn_small(1, 28, 10), X28, y28, 2 if args.quick else 5, device)
    torch.manual_seed(0)
    robust_mlp = models.mlp(64, (128, 128), 10)
    robust_train(robust_mlp, X8, y8, method="pgd", eps=args.eps, epochs=8 if args.quick else 20, progress=False,
                 device=device, seed=0)
    robust_mlp.eval()
    torch.manual_seed(0)
    random_mlp = models.mlp(64, (128, 128), 10).to(device).eval()
    with torch.no_grad():
        random_labels = random_mlp(torch.as_tensor(Xt8).to(device)).argmax(1).cpu().numpy()

    jobs, speed, strength = [], {}, {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        speed["digits MLP 64-128-128-10"] = speed_section("mlp", mlp, *batch_of(X8, y8, 512), args.eps, 40,
                                                          repeats, device, tmp, jobs)
        speed["cnn_small 28x28"] = speed_section("cnn", cnn, *batch_of(X28, y28, 128 if args.quick else 512),
                                                 args.eps, 40, repeats, device, tmp, jobs)
        for name, model, labels in [("digits MLP", mlp, yt8), ("PGD-trained digits MLP", robust_mlp, yt8),
                                    ("random MLP", random_mlp, random_labels)]:
            strength[name] = strength_section(name.replace(" ", "-"), model, Xt8, labels, args.eps, device, tmp,
                                              jobs)
        peers = run_peers(peer, jobs, args.threads, device)

    print(f"\n## PGD-40 ℓ∞ ε={args.eps}, overhead against 40 × (forward + backward to the input)")
    print("| model | batch | 40 × fwd+bwd (s) | PGD-40 (s) | overhead ratio (goal <= 1.15) | examples/s |")
    print("|---|---|---|---|---|---|")
    for name, row in speed.items():
        print(f"| {name} | {row['batch']} | {row['floor_seconds']:.4f} | {row['pgd_seconds']:.4f} | "
              f"{row['ratio']:.3f} | {row['examples_per_second']:.0f} |")
    print("\n## Like for like with torchattacks PGD (no random start, step 2.5ε/40, cross-entropy; both timed in "
          "the peer's process, alternating)")
    print("| model | ours (s) | torchattacks (s) | time ratio ours/theirs (goal <= 1) | robust acc ours | theirs |")
    print("|---|---|---|---|---|---|")
    for (name, row), key in zip(speed.items(), ("pgd-mlp", "pgd-cnn")):
        peer_row = peers.get(key, {})
        if "seconds" in peer_row:
            print(f"| {name} | {peer_row['ours_seconds']:.4f} | {peer_row['seconds']:.4f} | "
                  f"{peer_row['ours_seconds'] / peer_row['seconds']:.3f} | {row['like_robust_accuracy']:.4f} | "
                  f"{peer_row['robust_accuracy']:.4f} |")
        else:
            print(f"| {name} | | not measured: {peer_row.get('missing')} | | {row['like_robust_accuracy']:.4f} | |")
    print(f"\n## Strength: ensemble against AutoAttack (standard), ℓ∞ ε={args.eps}, digits test split (times: both in "
          f"the peer's process, ours the best of a run before and one after AutoAttack's)")
    print("| model | n | clean | PGD-40 CE | ensemble | AutoAttack | Δ points (goal <= +1) | ensemble (s) | "
          "AutoAttack (s) | time ratio (goal <= 0.2) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, row in strength.items():
        peer_row = peers.get(f"aa-{name.replace(' ', '-')}", {})
        if "seconds" in peer_row:
            aa = peer_row["robust_accuracy"]
            tail = (f"{aa:.4f} | {100 * (row['ensemble'] - aa):+.1f} | {peer_row['ours_seconds']:.1f} | "
                    f"{peer_row['seconds']:.1f} | {peer_row['ours_seconds'] / peer_row['seconds']:.3f} |")
        else:
            tail = f"not measured: {peer_row.get('missing')} | | {row['seconds']:.1f} | | |"
        print(f"| {name} | {row['n']} | {row['clean']:.4f} | {row['pgd_ce']:.4f} | {row['ensemble']:.4f} | {tail}")
    for name, row in strength.items():
        print(f"ensemble on {name}: examples fooled per stage {row['fooled_by']}")
    if device.type != "cuda":
        print("\nGPU: not measured here (no CUDA device); run with --device cuda on a machine with one.")


if __name__ == "__main__":
    main()
