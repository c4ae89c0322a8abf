r"""One training loop for every method: minibatches, optimizer, schedules, history, evaluation, checkpoints."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from numbers import Real

import numpy as np
import torch
from torch import nn

from .._validation import check_choice, check_eps, check_norm, check_positive_int, reject_unknown_options
from ..attacks._common import eval_mode
from ..models import as_inputs, as_labels, load, model_device, model_dtype, save
from ..sets import Ball
from .evaluation import evaluate
from .losses import METHODS, Context
from .schedules import check_lr_schedule, check_pair, check_window, lr_factor, ramp

__all__ = ["train", "robust_loss", "check_options"]


# ---------------------------------------------------------------------------------------------- argument checks
def _positive_number(value, name, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value < 0 or \
            (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number; got {value!r}")
    return float(value)


def check_options(method: str, options: dict) -> dict:
    """The method's options: its defaults updated with ``options``, each checked; unknown names raise."""
    method = check_choice(method, tuple(METHODS), "method")
    defaults = METHODS[method].defaults
    reject_unknown_options(options, f"method {method!r}", defaults)
    out = dict(defaults, **options)
    for name, value in out.items():
        if name in ("steps", "restarts"):
            out[name] = check_positive_int(value, name)
        elif name == "step_size":
            out[name] = None if value is None else _positive_number(value, name)
        elif name == "alpha":
            out[name] = _positive_number(value, name)
        elif name == "beta":
            out[name] = _positive_number(value, name, allow_zero=True)
        else:  # kappa, crown_weight: (start, end) values in [0, 1]
            out[name] = check_pair(value, name)
    return out


def _check_model(model):
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")


def _check_box(lower, upper, X):
    """lower / upper: each None, a number, or a tensor broadcastable to one example (a box shared by all); returned
    as None, floats, or tensors of one example's shape on X's device and dtype."""
    ball = Ball(0.0, "inf", lower, upper).flat(X[:1])
    return tuple(b.reshape(X.shape[1:]) if isinstance(b, torch.Tensor) else b for b in (ball.lower, ball.upper))


def _eps_window(eps_ramp, method, epochs):
    """The ε ramp (start, end) in epochs: ``"auto"`` is (0, epochs / 2) for certified methods and none (full ε
    from the start) for the others; ``None`` means no ramp."""
    if isinstance(eps_ramp, str) and eps_ramp == "auto":
        return (0.0, epochs / 2) if METHODS[method].certified else None
    return None if eps_ramp is None else check_window(eps_ramp, epochs, "eps_ramp")


def _device(device):
    return torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))


def _batch_seed(seed, *stream):
    """An independent seed for (seed, stream...), e.g. one per (epoch, batch)."""
    return int(np.random.SeedSequence([seed, *stream]).generate_state(1, np.uint64)[0]) & (2 ** 62 - 1)


# ---------------------------------------------------------------------------------------------- the objective alone
def robust_loss(model, X, y, method="pgd", eps=0.1, norm="inf", lower=0.0, upper=1.0, batch_size=256, seed=0,
                **options) -> float:
    """The mean training objective of ``method`` on (X, y) at radius ``eps`` and the end values of its ramps
    (κ, CROWN weight), without updating the model (which stays in its current mode)."""
    _check_model(model)
    batch_size = check_positive_int(batch_size, "batch_size")
    X = as_inputs(X, "X", dtype=model_dtype(model), device=model_device(model))
    y = as_labels(y, X.shape[0], None, "y", device=X.device)
    ctx = Context(check_eps(eps), check_norm(norm), *_check_box(lower, upper, X),
                  options=check_options(method, options))
    total = torch.zeros((), dtype=X.dtype, device=X.device)
    for b, batch in enumerate(torch.arange(X.shape[0], device=X.device).split(batch_size)):
        ctx.seed = _batch_seed(seed, 0, b)
        loss, _ = METHODS[method].loss(model, X[batch], y[batch], ctx)
        total += loss.detach() * len(batch)
    return float(total) / X.shape[0]


# ---------------------------------------------------------------------------------------------- training
def train(model, X, y, method="pgd", eps=0.1, norm="inf", *, epochs=10, batch_size=128, lr=1e-3, optimizer="adam",
          momentum=0.9, lr_schedule="constant", weight_decay=0.0, eps_ramp="auto", lower=0.0, upper=1.0, eval_data=None,
          eval_every=1, eval_pgd_steps=20, eval_certify="ibp", checkpoint=None, resume=False, device=None, seed=0,
          progress=True, **options) -> dict:
    r"""Minimize the empirical adversarial risk of ``model`` on (X, y) with ``method``; the model is trained in place.

    Parameters
    ----------
    model : an ``nn.Sequential`` (the certified methods need the layers of :func:`robustopt.verify.network`).
    X : numpy array or tensor (n, d) or images (n, C, H, W), inside the box; y : integer labels (n,).
    method : ``"standard"``, ``"fgsm"``, ``"fgsm_rs"``, ``"pgd"``, ``"trades"``, ``"onestep"``, ``"ibp"``,
        ``"crown_ibp"`` (see :mod:`robustopt.train.losses`).
    eps, norm, lower, upper : the ball ``{x' : ||x' - x|| <= eps, lower <= x' <= upper}`` (``eps`` is the final
        radius; the box is shared by all examples: a number, ``None``, or a tensor shaped like one example).
    epochs, batch_size, lr, optimizer (``"adam"`` or ``"sgd"``), weight_decay : the usual; ``momentum`` is SGD's
        (0 for plain SGD, as in the Kolter–Madry tutorial), ignored by Adam.
    lr_schedule : ``"constant"``, ``"cosine"``, ``"step"``, ``"cyclic"`` or ``factor(t, epochs)``; see
        :func:`robustopt.train.schedules.lr_factor`. Updated every batch.
    eps_ramp : ``(start_epoch, end_epoch)``: ε grows linearly from 0 to ``eps`` between these epochs (fractional,
        updated every batch), and κ / the CROWN weight move from their start to their end values with it.
        ``"auto"`` (default): ``(0, epochs / 2)`` for ``ibp`` and ``crown_ibp``, no ramp for the others;
        ``None``: full ε from the first batch.
    eval_data : optional (X_eval, y_eval), evaluated every ``eval_every`` epochs (and after the last) at the final
        ``eps``: clean accuracy, PGD accuracy (``eval_pgd_steps`` steps, 0 to skip) and certified accuracy with
        ``eval_certify`` (a :func:`robustopt.verify.certify` method name, a list of them, or None).
    checkpoint : optional path; the model is saved there with :func:`robustopt.models.save` after every epoch
        (a ``{epoch}`` field in the path keeps one file per epoch), and beside it, in ``PATH.state``, what a
        resumed run needs: the epoch, the optimizer's state, the shuffling generator's state and the history.
    resume : with ``checkpoint``, continue from the last epoch saved there (the model's weights are loaded into
        ``model``), with the same arguments; the result equals an uninterrupted run. No checkpoint yet: start.
    device : ``None`` means CUDA when available; the model is moved there (in place).
    seed : fixes the shuffling and the random starts (not the model's initialization).
    options : the method's own, with defaults: ``fgsm_rs``: ``alpha=1.25`` (step = alpha * eps); ``pgd``:
        ``steps=10, step_size=None`` (2.5 * eps / steps), ``restarts=1``; ``trades``: ``beta=6.0, steps=10,
        step_size=None``; ``ibp``: ``kappa=(1.0, 0.5)`` (weight of the clean loss, start and end of the ramp);
        ``crown_ibp``: ``kappa=(1.0, 0.5), crown_weight=(1.0, 0.0)``.

    Returns the history, a dict: ``method``, ``eps``, ``norm``, ``epochs``, ``device``, ``options``; per epoch
    ``loss`` (the method's objective, averaged over the epoch's batches), ``accuracy`` (clean, on the training
    batches), ``eps_schedule`` and ``lr_schedule`` (values at the epoch's end), ``seconds_per_epoch``; with
    ``eval_data``: ``eval_epoch`` and ``eval_accuracy``, ``eval_pgd_accuracy``, ``eval_certified_accuracy``
    ({method: [...]}); ``checkpoints`` (paths written); ``seconds`` (training, without evaluation).
    """
    run = _setup(model, X, y, method, eps, norm, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                 momentum=momentum, lr_schedule=lr_schedule, weight_decay=weight_decay, eps_ramp=eps_ramp, lower=lower,
                 upper=upper, eval_data=eval_data, eval_every=eval_every, eval_pgd_steps=eval_pgd_steps,
                 device=device, seed=seed, options=options)
    history = {"method": run.method, "eps": run.eps, "norm": run.norm, "epochs": run.epochs, "device": str(run.device),
               "options": run.options, "eps_ramp": run.window, "loss": [], "accuracy": [], "eps_schedule": [],
               "lr_schedule": [], "seconds_per_epoch": [], "checkpoints": []}
    generator = torch.Generator().manual_seed(int(seed))
    first = _resume(model, run, generator, history, checkpoint) if resume else 0
    bar = range(first, run.epochs)
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(bar, desc=f"train ({run.method})", leave=False, initial=first, total=run.epochs)
    for epoch in bar:
        tic = time.perf_counter()
        loss, accuracy, eps_now = _epoch(model, run, generator, epoch)
        _record(history, run, model, epoch, time.perf_counter() - tic, loss, accuracy, eps_now, eval_data,
                eval_certify, checkpoint, generator)
        if progress:
            bar.set_postfix(loss=f"{loss:.4f}", acc=f"{accuracy:.3f}", eps=f"{eps_now:.4g}")
    history["seconds"] = float(sum(history["seconds_per_epoch"]))
    return history


@dataclass
class _Run:
    """The checked settings of one :func:`train` call: the data on the device, the ball, the schedules, the
    optimizer and the method's loss."""

    method: str
    options: dict
    eps: float
    norm: object
    epochs: int
    batch_size: int
    eval_every: int
    eval_pgd_steps: int
    lr: float
    lr_schedule: object
    window: object
    device: torch.device
    X: torch.Tensor
    y: torch.Tensor
    lower: object
    upper: object
    seed: int
    opt: torch.optim.Optimizer
    loss_fn: object


def _setup(model, X, y, method, eps, norm, *, epochs, batch_size, lr, optimizer, momentum, lr_schedule, weight_decay,
           eps_ramp, lower, upper, eval_data, eval_every, eval_pgd_steps, device, seed, options) -> _Run:
    """Check every argument of :func:`train` (``ValueError`` naming it), move the model and the data to the
    device, and build the optimizer."""
    _check_model(model)
    method = check_choice(method, tuple(METHODS), "method")
    options = check_options(method, options)
    eps, norm = check_eps(eps), check_norm(norm)
    epochs, batch_size = check_positive_int(epochs, "epochs"), check_positive_int(batch_size, "batch_size")
    eval_every = check_positive_int(eval_every, "eval_every")
    lr = _positive_number(lr, "lr")
    weight_decay = _positive_number(weight_decay, "weight_decay", allow_zero=True)
    momentum = _positive_number(momentum, "momentum", allow_zero=True)
    optimizer = check_choice(optimizer, ("adam", "sgd"), "optimizer")
    lr_schedule = check_lr_schedule(lr_schedule)
    window = _eps_window(eps_ramp, method, epochs)
    eval_pgd_steps = check_positive_int(eval_pgd_steps, "eval_pgd_steps", minimum=0)
    device = _device(device)
    model.to(device)
    X = as_inputs(X, "X", dtype=model_dtype(model), device=device)
    with eval_mode(model), torch.no_grad():
        classes = model(X[:1]).shape[1]
    y = as_labels(y, X.shape[0], classes, "y", device=device)
    lower, upper = _check_box(lower, upper, X)
    Ball(eps, norm, lower, upper).check_center(X, "X")
    if eval_data is not None:
        if not (isinstance(eval_data, (tuple, list)) and len(eval_data) == 2):
            raise ValueError("eval_data must be a pair (X_eval, y_eval)")
        as_labels(eval_data[1], len(eval_data[0]), classes, "eval_data labels")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    opt = (torch.optim.Adam(params, lr=lr, weight_decay=weight_decay) if optimizer == "adam" else
           torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay))
    return _Run(method, options, eps, norm, epochs, batch_size, eval_every, eval_pgd_steps, lr, lr_schedule, window,
                device, X, y, lower, upper, seed, opt, METHODS[method].loss)


def _epoch(model, run, generator, epoch):
    """One pass over shuffled minibatches, ε, κ and the learning rate following their schedules per batch; returns
    (mean loss, clean accuracy on the training batches, ε at the last batch). Leaves the model in eval mode."""
    X, y, n, device = run.X, run.y, run.X.shape[0], run.device
    batches = math.ceil(n / run.batch_size)
    total_loss = torch.zeros((), dtype=X.dtype, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    for b, batch in enumerate(torch.randperm(n, generator=generator).to(device).split(run.batch_size)):
        t = epoch + b / batches
        position = 1.0 if run.window is None else ramp(t, *run.window, 0.0, 1.0)
        ctx = Context(run.eps * position, run.norm, run.lower, run.upper, position,
                      _batch_seed(run.seed, 1, epoch, b), run.options)
        for group in run.opt.param_groups:
            group["lr"] = run.lr * lr_factor(run.lr_schedule, t, run.epochs)
        model.train()
        loss, logits = run.loss_fn(model, X[batch], y[batch], ctx)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        if logits is None:
            model.eval()
            with torch.no_grad():
                logits = model(X[batch])
        total_loss += loss.detach() * len(batch)
        correct += (logits.detach().argmax(1) == y[batch]).sum()
    model.eval()
    return float(total_loss) / n, int(correct) / n, ctx.eps


def _resume(model, run, generator, history, checkpoint) -> int:
    """Load the last checkpoint's weights and state into ``model``, the optimizer, ``generator`` and ``history``
    (in place); returns the number of epochs already done (0 when there is no checkpoint yet)."""
    if checkpoint is None:
        raise ValueError("resume=True needs checkpoint= (the path the interrupted run saved to)")
    paths = [str(checkpoint).format(epoch=e) for e in range(run.epochs, 0, -1)] if "{epoch}" in str(checkpoint) \
        else [str(checkpoint)]
    path = next((p for p in paths if os.path.exists(p + ".state")), None)
    if path is None:
        return 0
    state = torch.load(path + ".state", weights_only=True, map_location="cpu")
    model.load_state_dict(load(path, device=run.device).state_dict())
    run.opt.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    history.clear()
    history.update(state["history"])
    return int(state["epoch"])


def _record(history, run, model, epoch, seconds, loss, accuracy, eps_now, eval_data, eval_certify, checkpoint,
            generator):
    """The bookkeeping after an epoch: its numbers, an evaluation when due, a checkpoint when asked."""
    history["seconds_per_epoch"].append(seconds)
    history["loss"].append(loss)
    history["accuracy"].append(accuracy)
    history["eps_schedule"].append(eps_now)
    history["lr_schedule"].append(run.opt.param_groups[0]["lr"])
    if eval_data is not None and ((epoch + 1) % run.eval_every == 0 or epoch + 1 == run.epochs):
        _evaluate_into(history, model, eval_data, epoch + 1, run.eps, run.norm, run.lower, run.upper,
                       run.eval_pgd_steps, eval_certify, run.seed)
    if checkpoint is not None:
        path = str(checkpoint).format(epoch=epoch + 1)
        save(model, path)
        history["checkpoints"].append(path)
        torch.save({"epoch": epoch + 1, "optimizer": run.opt.state_dict(), "generator": generator.get_state(),
                    "history": history}, path + ".state")


def _evaluate_into(history, model, eval_data, epoch, eps, norm, lower, upper, pgd_steps, certify_methods, seed):
    """Append one evaluation (clean / PGD / certified accuracy on eval_data) to the history."""
    X_eval, y_eval = eval_data
    result = evaluate(model, X_eval, y_eval, eps, norm, lower, upper, pgd_steps=pgd_steps,
                      certify_methods=certify_methods, seed=seed)
    history.setdefault("eval_epoch", []).append(epoch)
    history.setdefault("eval_accuracy", []).append(result["clean_accuracy"])
    history.setdefault("eval_pgd_accuracy", []).append(result["pgd_accuracy"])
    certified = history.setdefault("eval_certified_accuracy", {})
    for name, value in result["certified_accuracy"].items():
        certified.setdefault(name, []).append(value)
