"""The same answers on a CUDA device as on the CPU: bounds, attacks, branch and bound and VNNLIB properties.

Skipped where torch sees no CUDA device (CI has none); run on a GPU machine with ``pytest tests/test_cuda.py``.
Each test builds a seeded random small network (verify_helpers.random_net: MLPs and conv nets), runs the same call
with the network and inputs on the CPU and on ``cuda``, and checks that results stay on the inputs' device and
agree: bounds to 1e-6 (float64; the order of GPU reductions differs), verdicts exactly.
"""
import copy

import numpy as np
import pytest
import torch

from robustopt.attacks import pgd
from robustopt.sets import Ball
from robustopt.verify import certify, margin_bounds
from robustopt.vnnlib import Property, verify_property
from verify_helpers import random_net

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA = torch.device("cuda")


def _case(seed, n=4):
    model, shape, k = random_net(seed)
    rng = np.random.default_rng(7000 + seed)
    x = torch.as_tensor(rng.uniform(0, 1, size=(n, *shape)))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model.eval(), x, y, float(rng.uniform(0.05, 0.2))


def _on_cuda(model, *tensors):
    return (copy.deepcopy(model).to(CUDA), *(t.to(CUDA) for t in tensors))


@pytest.mark.parametrize("method", ["ibp", "crown", "alpha-crown", "dual"])
@pytest.mark.parametrize("seed", range(6))
def test_margin_bounds_match_the_cpu(seed, method):
    model, x, y, eps = _case(seed)
    cpu = margin_bounds(model, x, y, eps, method=method)
    gpu = margin_bounds(*_on_cuda(model, x, y), eps, method=method)
    assert gpu.device.type == "cuda"
    finite = torch.isfinite(cpu)
    assert torch.equal(finite, torch.isfinite(gpu.cpu()))
    np.testing.assert_allclose(gpu.cpu()[finite].numpy(), cpu[finite].numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", range(9))
def test_bab_verdicts_match_the_cpu(seed):
    model, x, y, eps = _case(seed)
    cpu = certify(model, x, y, eps, method="bab", progress=False)
    cuda_model, cuda_x, cuda_y = _on_cuda(model, x, y)
    gpu = certify(cuda_model, cuda_x, cuda_y, eps, method="bab", progress=False)
    assert list(gpu.status) == list(cpu.status)
    ball = Ball(eps, "inf", 0.0, 1.0)
    for i, point in gpu.counterexample.items():
        assert point.device.type == "cuda"
        assert bool(ball.contains(point.unsqueeze(0).cpu(), x[i:i + 1]).all())
        with torch.no_grad():
            logits = model(point.cpu().unsqueeze(0))[0]
        assert float(logits[y[i]] - torch.cat([logits[:y[i]], logits[y[i] + 1:]]).max()) <= 0


def test_pgd_stays_on_the_device_and_in_the_ball():
    model, x, y, eps = _case(1, n=16)
    cuda_model, cuda_x, cuda_y = _on_cuda(model, x, y)
    result = pgd(cuda_model, cuda_x, cuda_y, eps, steps=10, seed=0)
    assert result.x_adv.device.type == "cuda"
    assert float((result.x_adv - cuda_x).abs().max()) <= eps + 1e-12
    assert float(result.x_adv.min()) >= 0 and float(result.x_adv.max()) <= 1


@pytest.mark.parametrize("seed", range(9))
def test_vnnlib_properties_match_the_cpu(seed):
    """Disjunctions of conjunctions; MLPs of at most 20 inputs take the input-split search, conv nets the
    ReLU-split one."""
    model, shape, k = random_net(seed)
    model.input_shape = shape
    rng = np.random.default_rng(900 + seed)
    centre = rng.uniform(0.2, 0.8, size=int(np.prod(shape)))
    radius = rng.uniform(0.03, 0.2)
    disjuncts = [(rng.normal(size=(m, k)), rng.normal(size=m) * 2 - 1.5)
                 for m in rng.integers(1, 4, size=rng.integers(1, 4))]
    prop = Property(np.clip(centre - radius, 0, 1), np.clip(centre + radius, 0, 1), disjuncts, k)
    cpu = verify_property(model, prop, method="bab", attack=False)
    cuda_model = _on_cuda(model)[0]
    cuda_model.input_shape = shape
    gpu = verify_property(cuda_model, prop, method="bab", attack=False)
    assert gpu["result"] == cpu["result"] in ("sat", "unsat")
