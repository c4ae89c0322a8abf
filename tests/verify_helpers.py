"""Shared pieces of the verify test suites: seeded random small ReLU networks and instances, points of the
ball to test bounds against, and a one-thread fixture (tiny tensors run several times faster that way on a
shared 2-core machine). Import with ``from verify_helpers import ...`` (pytest puts tests/ on sys.path)."""
import numpy as np
import pytest
import torch
from torch import nn

from robustopt.sets import Ball

NORMS = ["inf", 2, 1]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one torch thread is several times faster on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_net(seed):
    """A small random ReLU net: an MLP (1-3 hidden layers, widths 4-32) or a conv net on (c, 6, 6)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 5))
    if seed % 3 == 2:
        c = int(rng.integers(1, 3))
        ch = int(rng.integers(2, 5))
        layers = [nn.Conv2d(c, ch, 3, padding=int(rng.integers(0, 2)), stride=int(rng.integers(1, 3))), nn.ReLU()]
        if rng.random() < 0.5:
            layers += [nn.Conv2d(ch, ch, 2), nn.ReLU()]
        flat = nn.Sequential(*layers)(torch.zeros(1, c, 6, 6)).numel()
        layers += [nn.Flatten()]
        if rng.random() < 0.5:
            w = int(rng.integers(4, 17))
            layers += [nn.Linear(flat, w), nn.ReLU()]
            flat = w
        model = nn.Sequential(*layers, nn.Linear(flat, k))
        shape = (c, 6, 6)
    else:
        d = int(rng.integers(2, 9))
        model, shape = relu_mlp(d, rng.integers(4, 33, size=int(rng.integers(1, 4))), k), (d,)
    return randomized(model, gen), shape, k


def relu_mlp(d, widths, k):
    """Linear(d, w_1), ReLU, ..., Linear(w_last, k)."""
    layers, prev = [], d
    for w in widths:
        layers += [nn.Linear(prev, int(w)), nn.ReLU()]
        prev = int(w)
    return nn.Sequential(*layers, nn.Linear(prev, k))


def randomized(model, gen):
    """``model`` in float64 eval mode with N(0, 0.8^2) weights and N(0, 0.5^2) biases drawn from ``gen`` (biases
    this large make a mix of stable and unstable neurons)."""
    for p in model.parameters():
        p.data = torch.randn(p.shape, generator=gen) * (0.8 if p.dim() > 1 else 0.5)
    return model.double().eval()


def random_instance(seed, n=6):
    """(model, x, y, classes, norm, eps): a random net from :func:`random_net`, inputs in [0, 1], labels, a
    norm depending on the seed and a radius scaled to it."""
    model, shape, k = random_net(seed)
    rng = np.random.default_rng(1000 + seed)
    x = torch.as_tensor(rng.uniform(0, 1, size=(n, *shape)))
    y = torch.as_tensor(rng.integers(0, k, size=n))
    norm = NORMS[(seed // 3) % 3]  # every architecture kind (seed % 3) meets every norm
    eps = float(rng.uniform(0.02, 0.3)) * {"inf": 1, 2: 2, 1: 4}[norm]
    return model, x, y, k, norm, eps


def sampled_margins(model, x, y, eps, norm, samples=48):
    """Upper bounds on the exact minimum margins, (n, k) (+inf in column y): the smallest margin over sampled
    points of the ball, random ones and maximizers of random linear functions."""
    ball = Ball(eps, norm)
    gen = torch.Generator().manual_seed(0)
    xf = x.flatten(1)
    pts = [ball.random(x, generator=gen) for _ in range(samples)]
    directions = torch.randn(samples, *xf.shape, generator=gen, dtype=x.dtype)
    pts += [ball.support_point(c, xf).view_as(x) for c in directions]
    logits = torch.stack([model(p) for p in pts])  # (s, n, k)
    own = logits.gather(2, y.view(1, -1, 1).expand(len(pts), -1, 1))
    return (own - logits).amin(0).detach().scatter(1, y.view(-1, 1), float("inf"))
