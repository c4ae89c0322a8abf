"""``robustopt train``: build a network, train it (standard, adversarial or certified), save it, evaluate it."""
from __future__ import annotations

import re

from .options import (CommandError, add_ball_options, add_data_options, add_run_options, emit, load_data,
                      method_list, setup)


def add_parser(subparsers):
    from ..train import METHODS

    parser = subparsers.add_parser(
        "train", help="train a network (standard, adversarial or certified) and save it",
        description="Trains mlp:W1,W2,... or cnn_small on the data with robustopt.train, saves it with "
                    "robustopt.models.save (readable by attack / certify / compare), then reports clean, PGD and "
                    "certified accuracy on the test split.")
    parser.add_argument("--arch", default="mlp:32,32", metavar="ARCH",
                        help="mlp:W1,W2,... (hidden widths; 'mlp:' is a linear model) or cnn_small (default mlp:32,32)")
    parser.add_argument("--method", default="standard", choices=tuple(METHODS),
                        help="training method (default standard); the ball is --eps/--norm")
    parser.add_argument("--epochs", type=int, default=10, metavar="E", help="epochs (default 10)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--batch-size", type=int, default=128, metavar="B", help="batch size (default 128)")
    parser.add_argument("--eval-n", type=int, default=500, metavar="N",
                        help="test examples for the final evaluation (default 500; 0 to skip)")
    parser.add_argument("--certify", dest="certify_methods", action="append", metavar="M[,M...]",
                        help="bound methods for the evaluation (default ibp,crown)")
    add_data_options(parser, split="train")
    add_ball_options(parser, eps=0.1)
    add_run_options(parser, out_help="where to save the model (default model.pt)")
    parser.set_defaults(run=run)
    return parser


def build(arch, example_shape, classes):
    """The network named by ``--arch`` for inputs of ``example_shape`` and ``classes`` outputs."""
    import numpy as np

    from ..models import cnn_small, mlp

    if arch == "cnn_small":
        if len(example_shape) != 3 or example_shape[1] != example_shape[2]:
            raise CommandError(f"--arch cnn_small needs square images (channels, side, side); the data has "
                               f"{example_shape} per example")
        return cnn_small(example_shape[0], example_shape[1], classes)
    match = re.fullmatch(r"mlp:((?:\d+)(?:,\d+)*)?", arch)
    if not match:
        raise CommandError(f"--arch must be mlp:W1,W2,... (e.g. mlp:32,32) or cnn_small; got {arch!r}")
    widths = [int(w) for w in match.group(1).split(",")] if match.group(1) else []
    return mlp(int(np.prod(example_shape)), widths, classes)


def run(args):
    import torch

    from ..models import save
    from ..train import evaluate, train
    from ..verify import METHODS

    setup(args)
    out = args.out or "model.pt"
    methods = method_list(args.certify_methods, tuple(METHODS), "--certify") or ["ibp", "crown"]
    X, y = load_data(args)
    classes = max(int(y.max()) + 1, 2)
    torch.manual_seed(args.seed)
    model = build(args.arch, tuple(X.shape[1:]), classes)
    history = train(model, X, y, method=args.method, eps=args.eps, norm=args.norm, epochs=args.epochs, lr=args.lr,
                    batch_size=args.batch_size, lower=args.lower, upper=args.upper, device=args.device,
                    seed=args.seed, progress=args.progress)
    save(model, out)
    result = {"model": out, "arch": args.arch, "method": args.method, "eps": args.eps, "norm": args.norm,
              "epochs": args.epochs, "n_train": len(y), "train_seconds": history["seconds"],
              "train_loss": history["loss"][-1], "train_accuracy": history["accuracy"][-1], "evaluation": None}
    ball = "" if args.method == "standard" else f" (eps {args.eps}, l_{args.norm})"
    lines = [f"trained {args.arch} with {args.method}{ball} on {len(y)} {args.data} "
             f"examples for {args.epochs} epochs in {history['seconds']:.1f} s: loss {result['train_loss']:.4f}, "
             f"training accuracy {result['train_accuracy']:.3f}", f"saved {out}"]
    if args.eval_n:
        Xt, yt = load_data(args, split="test")
        Xt, yt = Xt[:args.eval_n], yt[:args.eval_n]
        model.eval()
        ev = evaluate(model, Xt, yt, args.eps, args.norm, args.lower, args.upper, certify_methods=methods,
                      seed=args.seed)
        result["evaluation"] = {k: ev[k] for k in ("n", "clean_accuracy", "pgd_accuracy", "certified_accuracy",
                                                   "seconds")}
        certified = ", ".join(f"{m} {v:.3f}" for m, v in ev["certified_accuracy"].items())
        lines.append(f"test ({ev['n']} examples, eps {args.eps}): clean {ev['clean_accuracy']:.3f}, PGD-40 "
                     f"{ev['pgd_accuracy']:.3f}, certified: {certified}")
    emit(args, result, "\n".join(lines))
    return 0
