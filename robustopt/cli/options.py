"""What every subcommand shares: one-line errors, the common options, data and model loading, JSON output.

Subcommand modules call :func:`add_data_options`, :func:`add_ball_options` and :func:`add_run_options` on
their parser, then in ``run(args)``: :func:`setup` (seed, threads), :func:`load_model`, :func:`load_data`,
and :func:`emit` to print a text report or, with ``--json``, one JSON document with :func:`metadata`.
Heavy imports (torch, the solvers) happen inside the functions, so ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys

__all__ = ["CommandError", "Parser", "add_data_options", "add_ball_options", "add_run_options",
           "add_cluster_options", "cluster", "method_list", "setup", "load_model", "load_data", "prepare_inputs",
           "metadata", "emit", "jsonable", "write_json"]

DATASETS = ("digits", "mnist", "fashion-mnist")


class CommandError(Exception):
    """A usage or input problem, reported as one line on stderr (exit code 1)."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (exit code 2) instead of usage + message."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


# ---------------------------------------------------------------------------------------------- options
def _eps_value(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"eps must be a number >= 0; got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"eps must be a finite number >= 0; got {text!r}")
    return value


def _box_value(text):
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none'; got {text!r}") from None


def _norm_value(text):
    from .._validation import check_norm

    try:
        return check_norm(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_data_options(parser, split="test", n=None):
    """``--data``, ``--root``, ``--split``, ``--n``, ``--start``."""
    group = parser.add_argument_group("data")
    group.add_argument("--data", default="digits", metavar="NAME|FILE.npz",
                       help="digits (embedded 8x8, the default), mnist, fashion-mnist, or a .npz file with arrays "
                            "X (inputs in [0, 1]) and y (integer labels)")
    group.add_argument("--root", default=None, metavar="DIR",
                       help="folder with the MNIST / Fashion-MNIST IDX files (default: $ROBUSTOPT_DATA, then the "
                            "usual places)")
    group.add_argument("--split", default=split, choices=("train", "test"), help=f"which split (default: {split})")
    group.add_argument("--n", type=int, default=n, metavar="N",
                       help="use the first N examples" + (f" (default: {n})" if n else " (default: all)"))
    group.add_argument("--start", type=int, default=0, metavar="I", help="index of the first example (default: 0)")


def add_ball_options(parser, eps=0.05, multiple=False):
    """``--eps`` (one value, or several with ``multiple``), ``--norm``, ``--lower``, ``--upper``."""
    group = parser.add_argument_group("perturbation ball {x' : ||x' - x|| <= eps, lower <= x' <= upper}")
    if multiple:
        group.add_argument("--eps", type=_eps_value, nargs="+", default=[eps], metavar="EPS",
                           help=f"radius, or several radii for a sweep (default: {eps})")
    else:
        group.add_argument("--eps", type=_eps_value, default=eps, metavar="EPS", help=f"radius (default: {eps})")
    group.add_argument("--norm", type=_norm_value, default="inf", metavar="{inf,2,1}",
                       help="the ball's norm (default: inf)")
    group.add_argument("--lower", type=_box_value, default=0.0, metavar="L",
                       help="lower end of the input box, or 'none' (default: 0)")
    group.add_argument("--upper", type=_box_value, default=1.0, metavar="U",
                       help="upper end of the input box, or 'none' (default: 1)")


def add_run_options(parser, out_help="write the results to this file"):
    """``--json``, ``--out``, ``--device``, ``--seed``, ``--threads``, ``--progress``, ``--traceback``."""
    group = parser.add_argument_group("run")
    group.add_argument("--json", action="store_true",
                       help="print the results as one JSON document (with seed, threads and package versions)")
    group.add_argument("--out", default=None, metavar="PATH", help=out_help)
    group.add_argument("--device", default=None, metavar="DEV",
                       help="torch device, e.g. cpu or cuda (default: CPU, or CUDA when training and available)")
    group.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    group.add_argument("--threads", type=int, default=None, metavar="T",
                       help="torch CPU threads (default: torch's choice)")
    group.add_argument("--progress", action="store_true", help="show progress bars (on stderr)")
    group.add_argument("--traceback", action="store_true", help="show the full traceback on errors")


def add_cluster_options(parser, resume=True):
    """``--jobs``, ``--scheduler`` and (for commands that write rows as they go) ``--resume``."""
    group = parser.add_argument_group("where the work runs")
    group.add_argument("--jobs", type=int, default=1, metavar="K",
                       help="local worker processes of one thread each (-1: every CPU; default 1)")
    group.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="a Dask scheduler, tcp://HOST:PORT (started with `dask scheduler`), or local:K for a "
                            "local cluster of K processes; needs the cluster extra (pip install 'robustopt[cluster]')")
    if resume:
        group.add_argument("--resume", action="store_true",
                           help="continue the run whose rows are in --out: skip the rows already there")


@contextlib.contextmanager
def cluster(args):
    """Checks --jobs / --scheduler / --resume and yields a dask Client (closed afterwards) or None."""
    if args.jobs == 0 or args.jobs < -1:
        raise CommandError(f"--jobs must be >= 1 or -1 (every CPU); got {args.jobs}")
    if getattr(args, "resume", False) and not args.out:
        raise CommandError("--resume needs --out (the file of the run to continue)")
    address = args.scheduler
    if address is None:
        yield None
        return
    if args.jobs != 1:
        raise CommandError("give --jobs (local processes) or --scheduler (a Dask cluster), not both")
    if args.device not in (None, "cpu"):
        raise CommandError("--scheduler runs on the workers' CPUs; drop --device")
    from ..verify.parallel import local_client, require_distributed

    match = re.fullmatch(r"local:(\d+)|(tcp|tls)://\[?[\w.:-]+\]?:\d+", address)
    if match is None or (match.group(1) is not None and int(match.group(1)) < 1):
        raise CommandError(f"--scheduler must be tcp://HOST:PORT (a running Dask scheduler) or local:K (K >= 1 "
                           f"local worker processes); got {address!r}")
    distributed = require_distributed()
    if match.group(1) is not None:
        client = local_client(int(match.group(1)))
    else:
        try:
            client = distributed.Client(address, timeout="10s")
        except (OSError, TimeoutError) as err:
            raise CommandError(f"--scheduler: no Dask scheduler answered at {address} ({err})") from None
    try:
        yield client
    finally:
        cluster_ = client.cluster if match.group(1) is not None else None
        client.close()
        if cluster_ is not None:
            cluster_.close()


def method_list(values, allowed, name="--method"):
    """Flatten repeated / comma-separated method names and check them against ``allowed``."""
    out = []
    for value in values or []:
        for item in value.split(","):
            item = item.strip().lower()
            if not item:
                continue
            if item not in allowed:
                raise CommandError(f"{name}: unknown method {item!r}; choose from {', '.join(allowed)}")
            if item not in out:
                out.append(item)
    return out


# ---------------------------------------------------------------------------------------------- set-up
def setup(args):
    """Seed numpy and torch, set the thread count; returns nothing (recorded later by :func:`metadata`)."""
    import numpy as np
    import torch

    if args.threads is not None:
        if args.threads < 1:
            raise CommandError(f"--threads must be >= 1; got {args.threads}")
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed % 2 ** 32)
    if getattr(args, "device", None) is not None:
        try:
            device = torch.device(args.device)
        except RuntimeError as err:
            raise CommandError(f"--device: {err}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise CommandError(f"--device {args.device}: CUDA is not available on this machine")


def load_model(path, device=None):
    """A model from a :func:`robustopt.models.save` file or an ``.onnx`` file, in eval mode."""
    from .. import models

    path = os.fspath(path)
    if not os.path.exists(path):
        raise CommandError(f"model file {path!r} does not exist")
    if path.lower().endswith(".onnx"):
        from .. import onnx as robust_onnx

        model = robust_onnx.load(path)
    else:
        model = models.load(path)
    if device is not None:
        model.to(device)
    return model.eval()


def load_data(args, flatten=False, classes=None, split=None):
    """(X, y) as numpy arrays from ``--data`` / ``--root`` / ``--split`` (or ``split``), keeping only ``classes``
    when given, then ``--start`` / ``--n``."""
    import numpy as np

    from .. import data

    source, split = args.data, split or args.split
    if source.lower().endswith(".npz"):
        if not os.path.isfile(source):
            raise CommandError(f"--data: file {source!r} does not exist")
        try:
            with np.load(source, allow_pickle=False) as archive:
                missing = [k for k in ("X", "y") if k not in archive.files]
                if missing:
                    raise CommandError(f"--data {source}: the .npz file needs arrays X and y; it has "
                                       f"{', '.join(archive.files) or 'none'}")
                X, y = archive["X"], archive["y"]
        except (OSError, ValueError) as err:
            raise CommandError(f"--data {source}: not a readable .npz file ({err})") from None
        X = np.asarray(X, dtype=np.float32) if np.issubdtype(X.dtype, np.number) else X
        if classes is not None:
            keep = np.isin(y, classes)
            if not keep.any():
                raise CommandError(f"--data {source}: no examples with labels {list(classes)}")
            X, y = X[keep], y[keep]
    elif source == "digits":
        X, y = data.load_digits(split=split, flatten=flatten, classes=classes)
    elif source == "mnist":
        X, y = data.load_mnist(args.root, split=split, flatten=flatten, classes=classes)
    elif source == "fashion-mnist":
        X, y = data.load_fashion_mnist(args.root, split=split, flatten=flatten, classes=classes)
    else:
        raise CommandError(f"--data must be one of {', '.join(DATASETS)} or a .npz file; got {source!r}")
    if args.start < 0 or (args.n is not None and args.n < 1):
        raise CommandError(f"--start must be >= 0 and --n >= 1; got --start {args.start} --n {args.n}")
    stop = None if args.n is None else args.start + args.n
    X, y = X[args.start:stop], y[args.start:stop]
    if len(y) == 0:
        raise CommandError(f"no examples left after --start {args.start} (the data has fewer)")
    return X, y


def prepare_inputs(model, X):
    """X (numpy) as a float tensor shaped the way ``model`` takes it (images, flat vectors, or the ONNX
    input shape), checked by a forward pass on one example."""
    import numpy as np
    import torch

    from ..models import model_device, model_dtype

    X = torch.as_tensor(np.ascontiguousarray(X))
    if not torch.is_floating_point(X):
        raise CommandError(f"the inputs must be floating-point values in [0, 1]; got dtype {X.dtype}")
    X = X.to(model_dtype(model, torch.float32))
    per_example = int(np.prod(X.shape[1:]))
    shapes = []
    if hasattr(model, "input_shape") and int(np.prod(model.input_shape)) == per_example:
        shapes.append(tuple(model.input_shape))
    shapes += [tuple(X.shape[1:]), (per_example,)]
    device = model_device(model)
    for shape in shapes:
        candidate = X.reshape(X.shape[0], *shape)
        try:
            with torch.no_grad():
                out = model(candidate[:1].to(device))
        except (RuntimeError, ValueError):
            continue
        if out.dim() == 2:
            return candidate
    raise CommandError(f"the model does not accept the data's inputs of shape {tuple(X.shape[1:])} per example "
                       f"(nor flattened to {per_example}); is it the right model for this --data?")


# ---------------------------------------------------------------------------------------------- output
def metadata(args) -> dict:
    """What a result needs to be reproduced: command line, seed, device, threads and package versions."""
    from ..compare.report import environment

    return {"command": ["robustopt", *sys.argv[1:]], "seed": getattr(args, "seed", None),
            "device": getattr(args, "device", None) or "cpu", **environment()}


def jsonable(value):
    from ..compare.report import jsonable as convert

    return convert(value)


def write_json(path, document):
    with open(path, "w") as f:
        json.dump(jsonable(document), f, indent=2)
        f.write("\n")


def emit(args, result: dict, text: str):
    """Print ``text`` or, with ``--json``, ``result`` plus ``"meta"`` as JSON on stdout."""
    if args.json:
        print(json.dumps(jsonable({**result, "meta": metadata(args)}), indent=2))
    else:
        print(text)
