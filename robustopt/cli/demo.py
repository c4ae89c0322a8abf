"""``robustopt demo``: the three uses on the embedded 8×8 digits, in under two minutes on 2 CPU cores.

1. exact robust linear classification: a standard and a robust logistic regression (digits 0 vs 1), clean and
   exact worst-case error side by side (:func:`robustopt.linear.demo_table`);
2. a small ReLU network trained standard and robustly (IBP by default), attacked with PGD and certified with every
   fast bound method on the test digits (:func:`robustopt.compare.compare`);
3. on a few test digits: attack, exact MILP value and every certificate side by side, the bound chain checked.
"""
from __future__ import annotations

import os
import sys
import time

from .options import _norm_value, add_run_options, emit, setup

FAST = ("pgd", "ibp", "crown", "alpha-crown", "dual")
EXACT = ("pgd", "ibp", "crown", "alpha-crown", "dual", "lp", "milp")
ROBUST_METHODS = ("ibp", "crown_ibp", "pgd", "trades", "fgsm_rs", "onestep")
FULL = {"epochs": 15, "fast": None, "exact": 6, "attack_steps": 40, "time_limit": 10.0}
QUICK = {"epochs": 2, "fast": 60, "exact": 2, "attack_steps": 10, "time_limit": 1.0}


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "demo", help="the three uses on the embedded digits (about a minute)",
        description="On scikit-learn's 8x8 digits (no download): (1) a standard and a robust logistic regression, "
                    "clean and exact worst-case error; (2) a 64-32-32-10 ReLU network trained standard and robustly "
                    "(--method, default IBP), attacked with PGD and certified with IBP, CROWN, alpha-CROWN and the dual network on "
                    "the test digits; (3) attack, exact MILP and certified bounds side by side on a few digits.")
    parser.add_argument("--eps", type=float, default=0.1, metavar="EPS",
                        help="l_inf radius for the networks, pixels in [0, 1] (default 0.1)")
    parser.add_argument("--norm", type=_norm_value, default="inf", metavar="{inf,2,1}",
                        help="the balls' norm (default inf; with 2, the LP and the MILP are left out: they are "
                             "polyhedral)")
    parser.add_argument("--method", default="ibp", choices=ROBUST_METHODS,
                        help="training method of the robust network (default ibp)")
    parser.add_argument("--linear-eps", type=float, default=0.2, metavar="EPS",
                        help="l_inf radius for the linear models (default 0.2)")
    parser.add_argument("--quick", action="store_true", help="a tiny setting (seconds), for tests")
    # --threads defaults to 1 here (see run)
    add_run_options(parser, out_help="folder for the trained models and the comparison files (md, csv, json, png)")
    parser.set_defaults(run=run)
    return parser


def _robust_name(args):
    return {"ibp": "IBP", "crown_ibp": "CROWN-IBP", "pgd": "PGD", "trades": "TRADES", "fgsm_rs": "FGSM-RS",
            "onestep": "one-step"}[args.method] + "-trained"


def _linear(args):
    from ..data import load_digits
    from ..linear import demo_table

    train = load_digits(classes=(0, 1), split="train", seed=args.seed)
    test = load_digits(classes=(0, 1), split="test", seed=args.seed)
    return demo_table(*train, *test, args.linear_eps, norm=args.norm, lower=0.0, upper=1.0)


def _networks(args, plan):
    """Train both networks; returns {name: (model, seconds)}."""
    import torch

    from ..data import load_digits
    from ..models import mlp
    from ..train import train

    X, y = load_digits(split="train", seed=args.seed)
    nets = {}
    for name, method in (("standard", "standard"), (_robust_name(args), args.method)):
        torch.manual_seed(args.seed)
        model = mlp(X.shape[1], (32, 32), 10)
        history = train(model, X, y, method=method, eps=args.eps, norm=args.norm, epochs=plan["epochs"], lr=3e-3, batch_size=64,
                        device=args.device, seed=args.seed, progress=args.progress)
        nets[name] = (model.eval(), history["seconds"])
    return nets


def _compare_all(args, plan, nets):
    """Per network: fast methods on the test digits, then every method with the MILP on a few of them."""
    import torch

    from ..compare import compare
    from ..data import load_digits

    Xt, yt = load_digits(split="test", seed=args.seed)
    n_fast = len(yt) if plan["fast"] is None else plan["fast"]
    X_fast, y_fast = torch.as_tensor(Xt[:n_fast]), torch.as_tensor(yt[:n_fast])
    out = {}
    for name, (model, _) in nets.items():
        common = dict(attack_steps=plan["attack_steps"], attack_restarts=1, seed=args.seed, progress=args.progress)
        exact_methods = EXACT if args.norm != 2 else tuple(m for m in EXACT if m not in ("lp", "milp"))
        fast = compare(model, X_fast, y_fast, args.eps, FAST, args.norm, **common)
        exact = compare(model, X_fast[:plan["exact"]], y_fast[:plan["exact"]], args.eps, exact_methods, args.norm,
                        time_limit=plan["time_limit"], **common)
        out[name] = (fast, exact)
    return out


def _pct(v):
    return "   –  " if v is None else f"{100 * v:5.1f}%"


def _text(args, linear_rows, nets, results, seconds):
    from ..compare.report import LEGEND, example_table

    eps = args.eps
    lines = [f"robustopt demo on the embedded 8x8 digits (seed {args.seed})", "",
             f"1. Exact robust linear classification: digits 0 vs 1, l_{args.norm} ball eps = {args.linear_eps} inside the "
             f"pixel box [0, 1]",
             f"   {'model':20s} {'clean error':>11s} {'worst-case error (exact)':>25s} {'fit seconds':>11s}"]
    for r in linear_rows:
        lines.append(f"   {r['model']:20s} {_pct(r['clean_error']):>11s} {_pct(r['robust_error']):>25s} "
                     f"{r['seconds']:11.2f}")
    first = next(iter(results.values()))[0].summary[0]
    lines += ["", f"2. A 64-32-32-10 ReLU network, standard and {_robust_name(args)}; l_{args.norm} eps = {eps}, "
                  f"{first['n']} test "
                  f"digits", "   accuracy: clean; under PGD (an upper bound on the robust accuracy); certified by "
                             "each method (lower bounds)",
              f"   {'network':12s} {'train s':>7s} {'clean':>6s} {'PGD':>6s} " +
              " ".join(f"{m:>11s}" for m in FAST[1:])]
    for name, (fast, _) in results.items():
        s = fast.summary[0]
        lines.append(f"   {name:12s} {nets[name][1]:7.1f} {_pct(s['clean_accuracy'])} "
                     f"{_pct(s['attack_accuracy']['pgd'])} " +
                     " ".join(f"{_pct(s['certified_accuracy'][m]):>11s}" for m in FAST[1:]))
    n_exact = next(iter(results.values()))[1].summary[0]["n"]
    lines += ["", f"3. The first {n_exact} test digits side by side (eps = {eps}). {LEGEND}"]
    for name, (_, exact) in results.items():
        lines += ["", f"{name} network:", "", example_table(exact, 0)]
    checked = sum(c.settings["chain_checks"] for pair in results.values() for c in pair)
    bad = sum(len(c.violations) for pair in results.values() for c in pair)
    lines += ["", f"Bound chain checked on {checked} (example, class, relation) triples: "
                  + ("no violation." if not bad else f"{bad} VIOLATIONS (a soundness bug, see the warnings)."),
              f"Total time {seconds:.1f} s."]
    return "\n".join(lines)


def _save(args, nets, results, linear_rows):
    from ..models import save
    from .compare import write_outputs
    from .options import metadata, write_json

    os.makedirs(args.out, exist_ok=True)
    written = []
    for name, (model, _) in nets.items():
        stem = os.path.join(args.out, "standard" if name == "standard" else args.method)
        save(model, stem + ".pt")
        written.append(stem + ".pt")
        written += write_outputs(results[name][1], stem + "_comparison",
                                 title=f"{name} 64-32-32-10 network on the digits")
    write_json(os.path.join(args.out, "linear.json"), {"rows": linear_rows, "meta": metadata(args)})
    return written + [os.path.join(args.out, "linear.json")]


def run(args):
    if args.threads is None:  # small models run fastest on one thread (and the MILP solver uses one)
        args.threads = 1
    setup(args)
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise FileNotFoundError(f"--out {args.out!r} exists and is not a folder")
    start = time.perf_counter()
    plan = QUICK if args.quick else FULL
    linear_rows = _linear(args)
    nets = _networks(args, plan)
    results = _compare_all(args, plan, nets)
    seconds = time.perf_counter() - start
    text = _text(args, linear_rows, nets, results, seconds)
    if args.out:
        text += "\nwrote " + ", ".join(_save(args, nets, results, linear_rows))
    payload = {"eps": args.eps, "norm": args.norm, "method": args.method, "linear_eps": args.linear_eps, "quick": args.quick, "seconds": seconds,
               "linear": linear_rows,
               "networks": {name: {"train_seconds": nets[name][1], "fast": fast.summary[0],
                                   "exact": exact.to_dict()} for name, (fast, exact) in results.items()}}
    emit(args, payload, text)
    ok = all(c.ok for pair in results.values() for c in pair)
    if not ok:
        print("robustopt demo: error: the bound chain was violated (see above)", file=sys.stderr)
    return 0 if ok else 3
