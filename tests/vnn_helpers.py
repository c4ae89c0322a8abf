"""Shared pieces of the VNNLIB / VNN-COMP / parallel test suites: a seeded digits MLP trained by the project,
tiny 2-D networks with an exhaustive grid check, and ONNX export. Import with ``from vnn_helpers import ...``."""
import copy
import functools
import os
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from robustopt.data import load_digits
from robustopt.models import fit, mlp

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@functools.lru_cache(maxsize=1)
def digits_model():
    """A 64-32-32-10 MLP trained 20 epochs on the digits training split (seeded), and the test split."""
    torch.manual_seed(0)
    X, y = load_digits(split="train")
    model = mlp(64, [32, 32], 10)
    fit(model, X, y, epochs=20, lr=3e-3, progress=False, seed=0, device="cpu")
    Xt, yt = load_digits(split="test")
    return model.eval(), Xt, yt


def tiny_net(seed, classes=3, final_relu=False):
    """A random 2-16-16-k ReLU MLP (optionally with a ReLU after the last layer, as ERAN's networks), its
    weights scaled up so that its decision regions have many pieces inside [0, 1]^2."""
    torch.manual_seed(seed)
    layers = [nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, classes)]
    with torch.no_grad():
        layers[0].weight.mul_(8)
        layers[0].bias.uniform_(-4, 4)
        layers[2].weight.mul_(2)
        layers[4].weight.mul_(2)
    if final_relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers).double().eval()


def lipschitz_inf(model):
    """An upper bound on the l_inf -> l_inf Lipschitz constant of an MLP: the product of the row-sum norms."""
    total = 1.0
    for layer in model:
        if isinstance(layer, nn.Linear):
            total *= float(layer.weight.detach().abs().sum(1).max())
    return total


def grid_objective(model, prop, steps=201):
    """min over a grid of the box of min_i h_i(x) (h_i = max_r A_ir f(x) - b_ir), and the grid spacing."""
    axes = [torch.linspace(lo, hi, steps, dtype=torch.float64) for lo, hi in zip(prop.lower, prop.upper)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(axes))
    with torch.no_grad():
        Y = model(grid).numpy()
    h = np.stack([(Y @ A.T - b).max(1) for A, b in prop.disjuncts], 1)
    spacing = float(max(prop.upper - prop.lower)) / (steps - 1)
    return float(h.min()), spacing


def export_onnx(model, path, in_features):
    """Export an MLP with torch's TorchScript exporter (no onnxscript needed); skips without onnx (an extra)."""
    pytest.importorskip("onnx")
    model = copy.deepcopy(model).float().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter announces its retirement
        torch.onnx.export(model, (torch.rand(1, in_features),), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"])
    return path


# (test image, eps): small radii hold, large ones are violated (the suites check it, not assume it)
BENCH_CASES = [(0, 0.01), (1, 0.01), (0, 0.25), (2, 0.25)]


def make_bench(root):
    """In folder ``root``: the digits network as ONNX, the four local-robustness properties of BENCH_CASES in
    specs/, and instances.csv (timeout 30 s) listing them."""
    import csv

    from robustopt.vnnlib import local_robustness, save

    model, Xt, yt = digits_model()
    export_onnx(model, root / "digits.onnx", 64)
    (root / "specs").mkdir()
    rows = []
    for i, eps in BENCH_CASES:
        name = f"specs/prop_{i}_{eps}.vnnlib"
        save(local_robustness(Xt[i], int(yt[i]), eps, 10), root / name)
        rows.append(("digits.onnx", name, 30))
    with open(root / "instances.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root


def assert_same_certificates(a, b):
    """Two CertifyResults agree bit for bit: verdicts, bounds and counterexamples."""
    assert np.array_equal(a.status, b.status)
    assert torch.equal(a.margin_bounds, b.margin_bounds)
    assert a.counterexample.keys() == b.counterexample.keys()
    for i in a.counterexample:
        assert torch.equal(a.counterexample[i], b.counterexample[i])
