"""Benchmark of robustopt.verify: methods x eps on two trained MLPs, IBP / CROWN against auto_LiRPA, and CROWN /
alpha-CROWN on conv nets against auto_LiRPA.

    python bench/verify.py [--quick] [--threads 1] [--peer-python /work/peers/lirpa-venv/bin/python]
                           [--sections table,lirpa,lp,milp,conv]

Networks: a digits MLP 64-32-32-10 and a 784-256-256-10 MLP on MNIST (28x28; skipped with a message when the
MNIST files are not found), both trained here with robustopt.models.fit. Sections:

1. table: certified accuracy and seconds per example of ``certify`` for every available method at three eps
   (l_inf, box [0, 1], PGD first), with PGD's robust accuracy as the upper reference; solver methods run on the
   first ``n_solver`` examples only, so that column compares every method on the same inputs;
2. auto_LiRPA: IBP and CROWN margin bounds on the same networks and inputs, max |difference| and time ratio
   (ours / theirs, best of ``--repeats``). auto_LiRPA runs in a separate interpreter that has it (``--peer-python``,
   default ``$AUTO_LIRPA_PYTHON``, then /work/peers/lirpa-venv/bin/python); the section says so when it is missing;
3. LP (``lp`` vs ``lp-cvxpy``) and 4. MILP sections: see the functions marked SOLVER SECTIONS below;
5. conv: CROWN and alpha-CROWN on the OVAL21 CIFAR nets and cnn_small, time / peak memory / bound, ours against
   auto_LiRPA in the same run (bench/verify_conv.py).
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from robustopt import data, models  # noqa: E402
from robustopt.verify import METHODS, certify, get_method, margin_bounds, network  # noqa: E402

DEFAULT_PEER = "/work/peers/lirpa-venv/bin/python"


# ---------------------------------------------------------------------------------------------- networks
def digits_setup(args):
    X, y = data.load_digits(split="train")
    Xt, yt = data.load_digits(split="test")
    torch.manual_seed(0)
    model = models.mlp(64, (32, 32), 10)
    models.fit(model, X, y, epochs=60, lr=3e-3, batch_size=64, progress=False, device="cpu")
    n = args.n_digits
    return {"name": "digits 64-32-32-10", "model": model.eval(), "x": torch.as_tensor(Xt[:n]),
            "y": torch.as_tensor(yt[:n]), "eps": (0.01, 0.02, 0.05), "test_accuracy": _accuracy(model, Xt, yt)}


def mnist_setup(args):
    try:
        X, y = data.load_mnist(args.mnist_root, split="train")
        Xt, yt = data.load_mnist(args.mnist_root, split="test")
    except FileNotFoundError as err:
        print(f"[skip] 784-256-256-10 MNIST MLP: {str(err).splitlines()[0]}")
        return None
    torch.manual_seed(0)
    model = models.mlp(784, (256, 256), 10)
    models.fit(model, X, y, epochs=args.mnist_epochs, lr=1e-3, batch_size=128, progress=False, device="cpu")
    n = args.n_mnist
    return {"name": "MNIST 784-256-256-10", "model": model.eval(), "x": torch.as_tensor(Xt[:n]).view(-1, 1, 28, 28),
            "y": torch.as_tensor(yt[:n]), "eps": (0.005, 0.01, 0.02), "test_accuracy": _accuracy(model, Xt, yt)}


def _accuracy(model, X, y):
    with torch.no_grad():
        return float((model(torch.as_tensor(X)).argmax(1).numpy() == y).mean())


# ---------------------------------------------------------------------------------------------- 1. the table
def available_methods(report=False):
    out = []
    for name in METHODS:
        try:
            get_method(name)
            out.append(name)
        except ValueError:
            if report:
                print(f"[skip] method {name!r} not available yet")
    return out


def method_table(setup, methods, args):
    """Certified accuracy on the first ``n_solver`` examples (every method) and on all examples (the closed-form
    methods), so the methods can be compared on the same inputs."""
    from robustopt.attacks import pgd

    rows = []
    x, y = setup["x"], setup["y"]
    few = min(len(x), args.n_solver)
    for eps in setup["eps"]:
        tic = time.perf_counter()
        robust = ~pgd(setup["model"], x, y, eps, steps=40, loss="margin", seed=0).success
        rows.append(("pgd (upper ref.)", eps, float(robust[:few].float().mean()), float(robust.float().mean()),
                     (time.perf_counter() - tic) / len(x)))
        for method in methods:
            solver = get_method(method).SOLVER
            n = few if solver else len(x)
            kw = {"time_limit": args.time_limit} if solver else {}
            res = certify(setup["model"], x[:n], y[:n], eps, method=method, progress=False, **kw)
            certified = res.status == "certified"
            rows.append((method, eps, float(certified[:few].mean()), None if solver else float(certified.mean()),
                         res.seconds / n))
    print(f"\n## {setup['name']} (test accuracy {setup['test_accuracy']:.4f}), l_inf, box [0, 1]")
    print(f"| method | eps | certified acc. (first {few}) | certified acc. (all {len(x)}) | s / example |")
    print("|---|---|---|---|---|")
    for method, eps, acc_few, acc_all, sec in rows:
        all_text = "-" if acc_all is None else f"{acc_all:.3f}"
        print(f"| {method} | {eps} | {acc_few:.3f} | {all_text} | {sec:.2e} |")
    return rows


# ---------------------------------------------------------------------------------------------- 2. auto_LiRPA
PEER_SCRIPT = r"""
import json, sys, time, torch
from torch import nn
from auto_LiRPA import BoundedModule, BoundedTensor
from auto_LiRPA.perturbations import PerturbationLpNorm
job = torch.load(sys.argv[1], weights_only=True)
torch.set_num_threads(int(job["threads"]))
sizes = job["sizes"].tolist()
layers = [nn.Flatten()]
for a, b in zip(sizes[:-2], sizes[1:-1]):
    layers += [nn.Linear(a, b), nn.ReLU()]
layers.append(nn.Linear(sizes[-2], sizes[-1]))
model = nn.Sequential(*layers).double()
model.load_state_dict(job["state"])
x, C, eps = job["x"], job["C"], float(job["eps"])
bounded = BoundedModule(model, x[:1])
ptb = PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=(x - eps).clamp(0, 1), x_U=(x + eps).clamp(0, 1))
out = {}
for method in ("IBP", "CROWN"):
    best = float("inf")
    for _ in range(int(job["repeats"])):
        tic = time.perf_counter()
        lb, _ = bounded.compute_bounds(x=(BoundedTensor(x, ptb),), method=method, C=C)
        best = min(best, time.perf_counter() - tic)
    out[method] = lb.detach()
    out[method + "_seconds"] = torch.tensor(best)
torch.save(out, sys.argv[2])
"""


def _peer_python(args):
    path = args.peer_python or os.environ.get("AUTO_LIRPA_PYTHON") or DEFAULT_PEER
    return path if path and Path(path).exists() else None


def lirpa_section(setup, args):
    peer = _peer_python(args)
    if peer is None:
        print("\n[skip] auto_LiRPA comparison: no peer interpreter (pass --peer-python or set AUTO_LIRPA_PYTHON)")
        return None
    from robustopt.verify.api import margin_spec

    model = setup["model"].double()
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    sizes = torch.tensor([linears[0].in_features] + [m.out_features for m in linears])
    state = {k: v.detach().clone() for k, v in torch.nn.Sequential(torch.nn.Flatten(), *_relu_stack(linears)).state_dict().items()}
    x = setup["x"].double().flatten(1)
    y = setup["y"]
    eps = setup["eps"][1]
    C = margin_spec(y, sizes[-1].item())
    with tempfile.TemporaryDirectory() as tmp:
        job, out = os.path.join(tmp, "job.pt"), os.path.join(tmp, "out.pt")
        torch.save({"state": state, "sizes": sizes, "x": x, "C": C, "eps": torch.tensor(eps, dtype=torch.float64),
                    "threads": torch.tensor(args.threads), "repeats": torch.tensor(args.repeats)}, job)
        proc = subprocess.run([peer, "-c", PEER_SCRIPT, job, out], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"\n[skip] auto_LiRPA comparison: the peer failed:\n{proc.stderr[-2000:]}")
            return None
        theirs = torch.load(out, weights_only=True)
    net = network(model)
    print(f"\n## {setup['name']}: IBP / CROWN against auto_LiRPA (eps {eps}, {len(x)} examples, "
          f"{args.threads} thread(s), best of {args.repeats})")
    print("| method | max abs. bound difference | ours (s) | auto_LiRPA (s) | ours / theirs |")
    print("|---|---|---|---|---|")
    result = {}
    for method in ("IBP", "CROWN"):
        best, ours = float("inf"), None
        for _ in range(args.repeats):
            tic = time.perf_counter()
            ours = margin_bounds(net, x, y, eps, method=method.lower(), batch_size=len(x))
            best = min(best, time.perf_counter() - tic)
        ours = ours[torch.isfinite(ours)].view(len(x), -1)
        diff = float((ours - theirs[method]).abs().max())
        peer_s = float(theirs[method + "_seconds"])
        print(f"| {method} | {diff:.2e} | {best:.4f} | {peer_s:.4f} | {best / peer_s:.2f} |")
        result[method] = {"max_diff": diff, "ours_s": best, "theirs_s": peer_s}
    return result


def _relu_stack(linears):
    layers = []
    for lin in linears[:-1]:
        layers += [lin, torch.nn.ReLU()]
    return layers + [linears[-1]]


# ---------------------------------------------------------------------------------------------- SOLVER SECTIONS
# The solver methods (lp, lp-cvxpy, milp) fill in these two sections; they run only when the methods exist.
def lp_section(setup, args):
    """SOLVER SECTION (LP): ``lp`` (HiGHS) against ``lp-cvxpy`` on the first ``n_solver`` examples: time ratio
    (goal >= 10x) and max bound difference (goal <= 1e-5). Implemented in bench/verify_solvers.py."""
    from verify_solvers import lp_section as solver_lp_section  # bench/ is on sys.path when run as a script

    args.n_lp = args.n_solver
    return solver_lp_section(setup, args)


def milp_section(setup, args):
    """SOLVER SECTION (MILP): median / max seconds per example for the exact verdict at eps = 0.05 on the digits
    MLP, over the examples that reach the MILP (not settled by PGD or CROWN first), and the solver time alone.
    Implemented in bench/verify_solvers.py."""
    from verify_solvers import milp_section as solver_milp_section

    return solver_milp_section(setup, args)


# ---------------------------------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer examples, one MNIST epoch")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (pinned; default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="best-of repeats for timings")
    parser.add_argument("--peer-python", default=None, help="interpreter with auto_LiRPA installed")
    parser.add_argument("--mnist-root", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--time-limit", type=float, default=10.0, help="seconds per example for solver methods")
    parser.add_argument("--n-solver", type=int, default=None, help="examples for solver methods (default 20; quick 5)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--sections", default="table,lirpa,lp,milp,conv", help="comma-separated sections to run")
    parser.add_argument("--n-conv", type=int, default=4, help="properties / images per conv net")
    parser.add_argument("--steps", type=int, default=20, help="alpha-CROWN iterations (both sides) in the conv section")
    parser.add_argument("--device", default="cpu", help="device of the conv section (cpu or cuda)")
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))
    unknown = sections - {"table", "lirpa", "lp", "milp", "conv"}
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}")
    args.n_digits, args.n_mnist, n_solver = (50, 20, 5) if args.quick else (200, 100, 20)
    args.n_solver = args.n_solver or n_solver
    args.mnist_epochs = 1 if args.quick else 3
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), float64 bounds")
    methods = available_methods(report=True)
    results = {}
    for setup_fn in (digits_setup, mnist_setup) if sections - {"conv"} else ():
        setup = setup_fn(args)
        if setup is None:
            continue
        results[setup["name"]] = {
            "table": method_table(setup, methods, args) if "table" in sections else None,
            "auto_LiRPA": lirpa_section(setup, args) if "lirpa" in sections else None,
            "lp": lp_section(setup, args) if "lp" in sections else None,
            "milp": milp_section(setup, args) if setup_fn is digits_setup and "milp" in sections else None,
        }
    if "conv" in sections:
        from verify_conv import conv_section  # bench/ is on sys.path when run as a script

        peer = _peer_python(args)
        if peer is None:
            print("\n[note] conv section: no auto_LiRPA interpreter, ours only (pass --peer-python)")
        results["conv"] = conv_section(args, peer)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
