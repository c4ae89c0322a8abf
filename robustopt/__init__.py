"""robustopt: adversarial robustness by convex optimization.

Three uses: certify a trained ReLU network (:mod:`robustopt.verify`), solve robust linear training
exactly (:mod:`robustopt.linear`), and compare attack lower bounds, exact values and certified bounds
side by side (:mod:`robustopt.compare`). Submodules are imported on first use, so ``import robustopt``
stays light.
"""
from importlib import import_module

from .sets import Ball

__version__ = "0.1.0"
__all__ = ["Ball", "__version__"]

_SUBMODULES = {"attacks", "compare", "data", "layers", "linear", "models", "onnx", "sets", "train", "verify",
               "vnnlib"}


def __getattr__(name):
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module 'robustopt' has no attribute {name!r}")
