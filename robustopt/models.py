"""Model builders, standard training, and safe save / load.

The networks are plain ``nn.Sequential`` stacks of the layers every other module understands:
``Linear``, ``Conv2d``, ``ReLU``, ``Flatten``, ``Identity``, :class:`robustopt.layers.Normalize` and
eval-mode ``BatchNorm1d`` / ``BatchNorm2d``. :func:`save` writes an architecture spec (plain data) plus a
``state_dict``; :func:`load` reads it with ``torch.load(..., weights_only=True)``, so a model file never
runs code.
"""
from __future__ import annotations

import math
import os
import pickle
import time
import warnings
import zipfile
from numbers import Integral

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._validation import check_choice, check_finite, check_labels, check_positive_int
from .layers import Normalize, flat_layers

__all__ = ["mlp", "cnn_small", "cnn_tutorial", "fit", "save", "load", "SUPPORTED_LAYERS"]

FORMAT = "robustopt-model"
FORMAT_VERSION = 1
SUPPORTED_LAYERS = ("Linear", "Conv2d", "ReLU", "Flatten", "Identity", "Normalize", "BatchNorm1d",
                    "BatchNorm2d", "Sequential (nested, flattened)")


# ---------------------------------------------------------------------------------------------- builders
def _normalization(normalize):
    """``None``, a :class:`Normalize` layer, or ``(mean, std)``."""
    if normalize is None:
        return []
    if isinstance(normalize, Normalize):
        return [normalize]
    if isinstance(normalize, (tuple, list)) and len(normalize) == 2:
        return [Normalize(*normalize)]
    raise ValueError(f"normalize must be None, a robustopt.layers.Normalize or a (mean, std) pair; got {normalize!r}")


def mlp(in_features, hidden, classes, normalize=None) -> nn.Sequential:
    """``Flatten, [Normalize,] (Linear, ReLU) * len(hidden), Linear``: a fully connected ReLU network.

    ``hidden`` is a sequence of widths (``()`` gives a linear model). Inputs of shape (n, in_features) or
    images whose flattened size is ``in_features``. ``normalize``: ``(mean, std)`` or a ``Normalize`` layer,
    applied to the raw inputs in [0, 1].
    """
    in_features = check_positive_int(in_features, "in_features")
    classes = check_positive_int(classes, "classes", minimum=2)
    if isinstance(hidden, Integral):
        raise ValueError(f"hidden must be a sequence of layer widths, e.g. ({hidden},); got {hidden!r}")
    widths = [check_positive_int(w, "hidden width") for w in hidden]
    layers = [nn.Flatten(), *_normalization(normalize)]
    for a, b in zip([in_features] + widths, widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(([in_features] + widths)[-1], classes))
    return nn.Sequential(*layers)


def cnn_small(in_channels=1, side=28, classes=10, normalize=None) -> nn.Sequential:
    """The small certifiable CNN (Wong & Kolter 2018): two stride-2 4×4 convolutions (16, 32 channels,
    padding 1), a 100-unit dense layer, ``classes`` outputs. Inputs of shape (n, in_channels, side, side).
    """
    in_channels = check_positive_int(in_channels, "in_channels")
    side = check_positive_int(side, "side", minimum=4)
    classes = check_positive_int(classes, "classes", minimum=2)
    out = (side + 2 - 4) // 2 + 1
    out = (out + 2 - 4) // 2 + 1
    return nn.Sequential(
        *_normalization(normalize),
        nn.Conv2d(in_channels, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * out * out, 100), nn.ReLU(),
        nn.Linear(100, classes),
    )


def cnn_tutorial(in_channels=1, side=28, classes=10, normalize=None) -> nn.Sequential:
    """The CNN of the Kolter–Madry tutorial (chapters 3–4): four 3×3 convolutions with padding 1 (32, 32, 64,
    64 channels; strides 1, 2, 1, 2), a 100-unit dense layer, ``classes`` outputs. Inputs (n, in_channels, side,
    side); on 28×28 MNIST the dense layer sees 64·7·7 features.
    """
    in_channels = check_positive_int(in_channels, "in_channels")
    side = check_positive_int(side, "side", minimum=4)
    classes = check_positive_int(classes, "classes", minimum=2)
    out = (side - 1) // 2 + 1
    out = (out - 1) // 2 + 1
    return nn.Sequential(
        *_normalization(normalize),
        nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * out * out, 100), nn.ReLU(),
        nn.Linear(100, classes),
    )


# ---------------------------------------------------------------------------------------------- training
def model_device(model: nn.Module, default=None) -> torch.device:
    """The device of the model's first parameter or buffer (``default``, else CPU, for a model with none)."""
    for t in _tensors(model):
        return t.device
    return torch.device(default or "cpu")


def model_dtype(model: nn.Module, default=None) -> torch.dtype:
    """The dtype of the model's first floating parameter or buffer (``default``, else torch's default)."""
    for t in _tensors(model):
        if torch.is_floating_point(t):
            return t.dtype
    return default or torch.get_default_dtype()


def _tensors(model):
    yield from model.parameters()
    yield from model.buffers()


def as_inputs(X, name="X", dtype=None, device=None) -> torch.Tensor:
    """numpy array or tensor -> floating tensor (n, ...) on ``device`` / ``dtype``, checked finite."""
    if not isinstance(X, (torch.Tensor, np.ndarray)):
        raise ValueError(f"{name} must be a numpy array or a torch tensor; got {type(X).__name__}")
    t = torch.as_tensor(X)
    if t.dim() < 2:
        raise ValueError(f"{name} must have shape (n, d) or (n, channels, height, width); got {tuple(t.shape)}")
    if not torch.is_floating_point(t):
        raise ValueError(f"{name} must hold floating-point values (images scaled to [0, 1]); got dtype {t.dtype}")
    t = t.to(device=device, dtype=dtype if dtype is not None else t.dtype)
    check_finite(t, name)
    return t


def as_labels(y, n, classes=None, name="y", device=None) -> torch.Tensor:
    """numpy array or tensor of integer labels -> int64 tensor (n,), each in [0, classes)."""
    if not isinstance(y, (torch.Tensor, np.ndarray, list, tuple)):
        raise ValueError(f"{name} must be an array of integer labels; got {type(y).__name__}")
    if isinstance(y, (list, tuple)):
        y = np.asarray(y)
    check_labels(y, n, classes, name)
    return torch.as_tensor(y, device=device).long()


def _output_classes(model, x) -> int:
    try:
        with torch.no_grad():
            out = model(x)
    except RuntimeError as err:
        raise ValueError(f"the model rejected inputs of shape {tuple(x.shape[1:])} per example ({err}); "
                         f"a CNN takes images (n, channels, height, width): load the data with "
                         f"flatten=False") from None
    if out.dim() != 2:
        raise ValueError(f"the model must output logits of shape (n, classes); got {tuple(out.shape)}")
    return out.shape[1]


def fit(model, X, y, epochs=10, lr=1e-3, batch_size=128, optimizer="adam", device=None, progress=True,
        seed=0, weight_decay=0.0):
    """Standard training: minimize the mean cross-entropy with Adam or SGD (momentum 0.9) on minibatches.

    ``X``: numpy array or tensor, (n, d) or images (n, C, H, W); ``y``: integer labels (n,).
    ``device=None`` means CUDA when available; the model is moved there (in place) and stays there.
    ``seed`` fixes the initial shuffle order (not the model's initialization). Returns the history, a dict
    with per-epoch ``"loss"`` and ``"accuracy"`` (on the training batches, as seen during the epoch),
    ``"device"``, ``"seconds"``, ``"epochs"``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number; got {lr!r}")
    optimizer = check_choice(optimizer, ("adam", "sgd"), "optimizer")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    dtype = model_dtype(model)
    X = as_inputs(X, "X", dtype=dtype, device=device)
    n = X.shape[0]
    classes = _output_classes(model, X[:1])
    y = as_labels(y, n, classes, "y", device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    opt = (torch.optim.Adam(params, lr=lr, weight_decay=weight_decay) if optimizer == "adam" else
           torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay))
    generator = torch.Generator().manual_seed(int(seed))
    history = {"loss": [], "accuracy": [], "device": str(device), "epochs": epochs}
    start = time.perf_counter()
    bar = _progress(range(epochs), progress, "fit")
    model.train()
    for _ in bar:
        order = torch.randperm(n, generator=generator).to(device)
        total_loss = torch.zeros((), dtype=dtype, device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        for batch in order.split(batch_size):
            logits = model(X[batch])
            loss = F.cross_entropy(logits, y[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total_loss += loss.detach() * len(batch)
            correct += (logits.argmax(1) == y[batch]).sum()
        history["loss"].append(total_loss.item() / n)
        history["accuracy"].append(correct.item() / n)
        if progress:
            bar.set_postfix(loss=f"{history['loss'][-1]:.4f}", acc=f"{history['accuracy'][-1]:.3f}")
    model.eval()
    history["seconds"] = time.perf_counter() - start
    return history


def _progress(iterable, enabled, desc):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, desc=desc, leave=False)


# ---------------------------------------------------------------------------------------------- save / load
class ModelFileError(ValueError):
    """A model file that is missing, not ours, or tampered with."""


def _layer_spec(layer) -> dict:
    """Plain-data description of one layer (its constructor arguments)."""
    kind = type(layer).__name__
    if isinstance(layer, nn.Linear):
        return {"type": "Linear", "in_features": layer.in_features, "out_features": layer.out_features,
                "bias": layer.bias is not None}
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros":
            raise ValueError(f"Conv2d with padding_mode={layer.padding_mode!r} is not supported (only 'zeros')")
        return {"type": "Conv2d", "in_channels": layer.in_channels, "out_channels": layer.out_channels,
                "kernel_size": list(layer.kernel_size), "stride": list(layer.stride),
                "padding": layer.padding if isinstance(layer.padding, str) else list(layer.padding),
                "dilation": list(layer.dilation), "groups": layer.groups, "bias": layer.bias is not None}
    if type(layer) in (nn.ReLU, nn.Identity):
        return {"type": kind}
    if type(layer) is nn.Flatten:
        return {"type": "Flatten", "start_dim": layer.start_dim, "end_dim": layer.end_dim}
    if type(layer) is Normalize:
        return {"type": "Normalize", "mean_shape": list(layer.mean.shape), "std_shape": list(layer.std.shape)}
    if type(layer) in (nn.BatchNorm1d, nn.BatchNorm2d):
        if not layer.track_running_stats:
            raise ValueError(f"{kind} without running statistics (track_running_stats=False) has no eval-mode "
                             f"form and is not supported")
        return {"type": kind, "num_features": layer.num_features, "eps": float(layer.eps),
                "affine": layer.affine}
    raise ValueError(f"unsupported layer {kind}; supported: {', '.join(SUPPORTED_LAYERS)}")


def _int_list(spec, key, length):
    value = spec.get(key)
    if not (isinstance(value, list) and len(value) == length and
            all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 1 << 20 for v in value)):
        raise ModelFileError(f"layer spec {spec.get('type')!r}: {key} must be {length} non-negative integers; "
                             f"got {value!r}")
    return value


def _count(spec, key, minimum=1):
    value = spec.get(key)
    if not (isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= 1 << 24):
        raise ModelFileError(f"layer spec {spec.get('type')!r}: {key} must be an integer >= {minimum}; got {value!r}")
    return value


def _flag(spec, key):
    value = spec.get(key)
    if not isinstance(value, bool):
        raise ModelFileError(f"layer spec {spec.get('type')!r}: {key} must be true or false; got {value!r}")
    return value


def _build_layer(spec) -> nn.Module:
    """Construct one layer from its spec, accepting only known types and checked plain values."""
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise ModelFileError(f"layer spec must be a dict with a 'type'; got {spec!r}")
    kind = spec["type"]
    if kind == "Linear":
        return nn.Linear(_count(spec, "in_features"), _count(spec, "out_features"), bias=_flag(spec, "bias"))
    if kind == "Conv2d":
        padding = spec.get("padding")
        if padding not in ("same", "valid"):
            padding = _int_list(spec, "padding", 2)
        return nn.Conv2d(_count(spec, "in_channels"), _count(spec, "out_channels"),
                         _int_list(spec, "kernel_size", 2), stride=_int_list(spec, "stride", 2), padding=padding,
                         dilation=_int_list(spec, "dilation", 2), groups=_count(spec, "groups"),
                         bias=_flag(spec, "bias"))
    if kind == "ReLU":
        return nn.ReLU()
    if kind == "Identity":
        return nn.Identity()
    if kind == "Flatten":
        start, end = spec.get("start_dim"), spec.get("end_dim")
        if not all(isinstance(v, int) and not isinstance(v, bool) and -8 <= v <= 8 for v in (start, end)):
            raise ModelFileError(f"layer spec 'Flatten': start_dim / end_dim must be small integers; got {spec!r}")
        return nn.Flatten(start, end)
    if kind == "Normalize":
        mean_shape = spec.get("mean_shape")
        std_shape = spec.get("std_shape")
        for key, shape in (("mean_shape", mean_shape), ("std_shape", std_shape)):
            if not isinstance(shape, list):
                raise ModelFileError(f"layer spec 'Normalize': {key} must be a list; got {shape!r}")
            _int_list(spec, key, len(shape))
        return Normalize(torch.zeros(mean_shape), torch.ones(std_shape))
    if kind in ("BatchNorm1d", "BatchNorm2d"):
        eps = spec.get("eps")
        if not (isinstance(eps, float) and 0 < eps < 1):
            raise ModelFileError(f"layer spec {kind!r}: eps must be a float in (0, 1); got {eps!r}")
        cls = nn.BatchNorm1d if kind == "BatchNorm1d" else nn.BatchNorm2d
        return cls(_count(spec, "num_features"), eps=eps, affine=_flag(spec, "affine"))
    raise ModelFileError(f"layer type {kind!r} is not supported; supported: {', '.join(SUPPORTED_LAYERS)}")


def save(model, path) -> None:
    """Write ``model`` (an ``nn.Sequential`` of supported layers; nested Sequentials are flattened) to ``path``:
    ``{"format", "version", "layers": [spec, ...], "dtype", "state_dict"}`` (plus ``"input_shape"`` when the
    model has that attribute, as ONNX-loaded models do), readable by :func:`load`."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"model must be an nn.Sequential of supported layers ({', '.join(SUPPORTED_LAYERS)}); "
                         f"got {type(model).__name__}")
    layers = list(flat_layers(model))
    specs = [_layer_spec(layer) for layer in layers]
    flat = nn.Sequential(*layers)
    state = {k: v.detach().cpu().clone() for k, v in flat.state_dict().items()}
    dtype = str(model_dtype(model)).replace("torch.", "")
    blob = {"format": FORMAT, "version": FORMAT_VERSION, "layers": specs, "dtype": dtype, "state_dict": state}
    if hasattr(model, "input_shape"):  # set by robustopt.onnx.load: the shape of one input example
        blob["input_shape"] = [int(v) for v in model.input_shape]
    torch.save(blob, os.fspath(path))


_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load(path, device=None) -> nn.Sequential:
    """Read a model written by :func:`save`, in eval mode, on ``device`` (default CPU).

    Uses ``torch.load(..., weights_only=True)``: no code from the file ever runs. A missing file, a file that
    is not a robustopt model (a pickled module, an arbitrary pickle, a truncated archive) or a tampered one
    (unknown layer types, odd values, state_dict entries that do not match the architecture) raises
    :class:`ModelFileError`, a ``ValueError``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"model file {path!r} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes about foreign pickle protocols
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, AttributeError,
            TypeError, OSError):
        raise ModelFileError(f"{path!r} is not a robustopt model file: torch.load(weights_only=True) refused it "
                             f"(not a torch file, or it holds pickled objects other than tensors and plain data, "
                             f"such as a whole nn.Module); write models with robustopt.models.save") from None
    if not (isinstance(blob, dict) and blob.get("format") == FORMAT):
        raise ModelFileError(f"{path!r} is not a robustopt model file (no '{FORMAT}' header); write models with "
                             f"robustopt.models.save")
    if blob.get("version") != FORMAT_VERSION:
        raise ModelFileError(f"{path!r} has format version {blob.get('version')!r}; this robustopt reads "
                             f"version {FORMAT_VERSION}")
    specs, state, dtype = blob.get("layers"), blob.get("state_dict"), blob.get("dtype")
    if not isinstance(specs, list) or not specs:
        raise ModelFileError(f"{path!r}: 'layers' must be a non-empty list of layer specs")
    if dtype not in _DTYPES:
        raise ModelFileError(f"{path!r}: dtype must be one of {', '.join(_DTYPES)}; got {dtype!r}")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ModelFileError(f"{path!r}: 'state_dict' must map names to tensors")
    try:
        model = nn.Sequential(*[_build_layer(s) for s in specs]).to(_DTYPES[dtype])
    except ModelFileError as err:
        raise ModelFileError(f"{path!r}: {err}") from None
    except (ValueError, RuntimeError, TypeError) as err:
        raise ModelFileError(f"{path!r}: invalid layer spec ({err})") from None
    expected = model.state_dict()
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ModelFileError(f"{path!r}: state_dict does not match the architecture (missing {missing}, "
                             f"unexpected {extra})")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ModelFileError(f"{path!r}: state_dict entry {key!r} has shape {tuple(value.shape)}, the "
                                 f"architecture needs {tuple(expected[key].shape)}")
    model.load_state_dict(state)
    if "input_shape" in blob:
        shape = blob["input_shape"]
        if not (isinstance(shape, list) and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                for v in shape)):
            raise ModelFileError(f"{path!r}: input_shape must be a list of positive integers; got {shape!r}")
        model.input_shape = tuple(shape)
    return model.to(device or "cpu").eval()
