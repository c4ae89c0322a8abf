"""``robustopt attack MODEL``: robust accuracy under an attack (an upper bound on the true robust accuracy)."""
from __future__ import annotations

from .options import add_ball_options, add_data_options, add_run_options, emit, load_data, load_model, prepare_inputs, setup

ATTACKS = ("pgd", "apgd", "fgsm", "ensemble")


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "attack", help="attack a model: clean and robust accuracy under FGSM / PGD / APGD",
        description="Attacks every correctly classified example inside the ball; an example counts as robust when "
                    "the attack fails, so the robust accuracy is an upper bound on the true one.")
    parser.add_argument("model", metavar="MODEL", help="a robustopt.models.save file or an .onnx file")
    parser.add_argument("--attack", "--method", dest="attack", default="pgd", choices=ATTACKS,
                        help="pgd (default), apgd, fgsm, or ensemble (PGD-margin, APGD-CE, APGD-T)")
    parser.add_argument("--steps", type=int, default=40, metavar="K", help="steps (default 40; not for fgsm)")
    parser.add_argument("--restarts", type=int, default=1, metavar="R", help="random restarts (default 1)")
    parser.add_argument("--loss", default=None, choices=("ce", "margin", "dlr"),
                        help="loss to maximize (default: ce; not for ensemble)")
    parser.add_argument("--batch-size", type=int, default=256, metavar="B", help="batch size (default 256)")
    add_data_options(parser)
    add_ball_options(parser)
    add_run_options(parser, out_help="write per-example clean_margin, margin (at the attack's point) and robust "
                                     "to this .npz file")
    parser.set_defaults(run=run)
    return parser


def run(args):
    import numpy as np
    import torch

    from ..attacks import evaluate_robustness

    setup(args)
    model = load_model(args.model, args.device)
    X, y = load_data(args)
    x = prepare_inputs(model, X)
    kwargs = dict(eps=args.eps, norm=args.norm, lower=args.lower, upper=args.upper)
    if args.attack != "fgsm":
        kwargs.update(steps=args.steps, restarts=args.restarts, seed=args.seed)
    if args.loss is not None:
        kwargs["loss"] = args.loss
    result = evaluate_robustness(model, x, torch.as_tensor(y), attack=args.attack, batch_size=args.batch_size,
                                 progress=args.progress, **kwargs)
    if args.out:
        np.savez(args.out, clean_margin=result["clean_margin"], margin=result["margin"], robust=result["robust"],
                 y=y)
    summary = {k: result[k] for k in ("attack", "n", "clean_accuracy", "robust_accuracy", "seconds")}
    payload = {"model": args.model, "data": args.data, "split": args.split, "eps": args.eps, "norm": args.norm,
               **summary, "clean_margin": result["clean_margin"], "margin": result["margin"]}
    text = (f"{args.attack} on {result['n']} {args.data} ({args.split}) examples, l_{args.norm} eps = {args.eps}: "
            f"clean accuracy {result['clean_accuracy']:.4f}, robust accuracy {result['robust_accuracy']:.4f} "
            f"(an upper bound), {result['seconds']:.1f} s" + (f"\nwrote {args.out}" if args.out else ""))
    emit(args, payload, text)
    return 0
