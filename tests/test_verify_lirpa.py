"""IBP and CROWN against auto_LiRPA (skipped unless auto_LiRPA is importable, e.g. when this file is run by
the interpreter of a throwaway venv that has it: ``/work/peers/lirpa-venv/bin/python -m pytest ...``).

auto_LiRPA bounds an intermediate neuron by CROWN when IBP leaves it unstable for some example of the batch
(all neurons when that is over 90% of the layer); ``skip_stable="batch"`` is that rule, so the values agree.
(The default, ``skip_stable=True``, decides per example, so that a bound does not depend on the batch.)"""
import pytest
import torch
from torch import nn

from robustopt.verify import margin_bounds
from robustopt.verify.api import margin_spec

auto_LiRPA = pytest.importorskip("auto_LiRPA")
perturbations = pytest.importorskip("auto_LiRPA.perturbations")


def _random_net(seed, conv):
    torch.manual_seed(seed)
    if conv:
        return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(),
                             nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5)).double(), (1, 6, 6)
    return nn.Sequential(nn.Linear(8, 20), nn.ReLU(), nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 12), nn.ReLU(),
                         nn.Linear(12, 5)).double(), (8,)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("method", ["IBP", "CROWN"])
def test_margin_bounds_equal_auto_lirpa(seed, method):
    model, shape = _random_net(seed, conv=seed % 2 == 1)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(7, *shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (7,), generator=gen)
    eps = 0.05
    C = margin_spec(y, 5)
    bounded = auto_LiRPA.BoundedModule(model, torch.zeros(1, *shape, dtype=torch.float64))
    ptb = perturbations.PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=(x - eps).clamp(0, 1),
                                           x_U=(x + eps).clamp(0, 1))
    theirs, _ = bounded.compute_bounds(x=(auto_LiRPA.BoundedTensor(x, ptb),), method=method, C=C)
    opts = {"skip_stable": "batch"} if method == "CROWN" else {}
    ours = margin_bounds(model, x, y, eps, method=method.lower(), **opts)
    ours = ours[torch.isfinite(ours)].view(7, 4)
    torch.testing.assert_close(ours, theirs.detach(), rtol=0, atol=1e-9)


OVAL = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data" / "vnncomp2021_oval21"


@pytest.mark.parametrize("name", ["cifar_base_kw", "cifar_wide_kw", "cifar_deep_kw"])
def test_crown_equals_auto_lirpa_on_the_oval21_conv_nets(name):
    """CROWN on the OVAL21 CIFAR nets over their own properties' boxes, float64: equal to auto_LiRPA (1e-5
    relative). Skipped without the shared data."""
    import glob

    from robustopt import onnx, vnnlib
    from robustopt.verify import spec_bounds

    path = OVAL / "nets" / f"{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path} not found")
    model = onnx.load(str(path)).double().eval()
    props = [vnnlib.load(p) for p in sorted(glob.glob(str(OVAL / "vnnlib" / f"{name}-*.vnnlib")))][:2]
    lower = torch.stack([p.input_box((3, 32, 32))[0] for p in props])
    upper = torch.stack([p.input_box((3, 32, 32))[1] for p in props])
    C = torch.stack([p.spec_matrix() for p in props])
    x = (lower + upper) / 2
    eps = float((upper - lower).amax() / 2) * (1 + 1e-9)
    ours = spec_bounds(model, x, C, eps, lower=lower, upper=upper, method="crown", skip_stable="batch")
    bounded = auto_LiRPA.BoundedModule(model, torch.zeros(1, 3, 32, 32, dtype=torch.float64))
    ptb = perturbations.PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=lower, x_U=upper)
    theirs, _ = bounded.compute_bounds(x=(auto_LiRPA.BoundedTensor(x, ptb),), method="CROWN", C=C, bound_upper=False)
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-5, atol=1e-6)
