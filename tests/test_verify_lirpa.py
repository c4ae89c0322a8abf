"""IBP and CROWN against auto_LiRPA (skipped unless auto_LiRPA is importable, e.g. when this file is run by
the interpreter of a throwaway venv that has it: ``/work/peers/lirpa-venv/bin/python -m pytest ...``)."""
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
    ours = margin_bounds(model, x, y, eps, method=method.lower())
    ours = ours[torch.isfinite(ours)].view(7, 4)
    torch.testing.assert_close(ours, theirs.detach(), rtol=0, atol=1e-9)
