r"""``bab``: complete verification by branch and bound, on ReLU splits or on the input box.

For each example and output row r of the (spec-folded) network g, the method returns a **proven** lower bound on
:math:`\min_{x' \in B} g_r(x')`. The ball is cut into domains, each bounded by alpha-/beta-CROWN; the domains whose
every row is above the threshold are closed, the others are split further, best first (:mod:`.bab_search`):

- ``split="relu"`` (:mod:`.bab_relu`): fix one unstable neuron active / inactive, chosen by filtered smart
  branching (the best of BaBSR's top candidates by a one-pass bound of their children, :mod:`.branching`);
  children bounded by beta-CROWN warm-started from their parent, on the rows still open; leaves (no unstable
  neuron left) settled by a linear program whose duals give a bound checked in float64. Complete.
- ``split="input"`` (:mod:`.bab_input`): halve the box along its widest coordinate (or, ``branching="babsr"``,
  the one with the largest :math:`|A_j| \cdot` width in the linear bound); l_inf only. Decides every row whose
  minimum is not exactly at the threshold.
- ``split="auto"``: input splitting for a decision (``stop_at`` given) when the ball is l_inf and at most
  :data:`INPUT_SPLIT_DIMENSIONS` coordinates can move (its box has lower < upper there), else ReLU splitting
  (without ``stop_at`` the bound must reach the exact minimum, which only the leaves' LPs give quickly: input
  splitting closes the last gap around a minimizer on an activation boundary very slowly).

The threshold: with ``stop_at=t`` (what ``certify`` passes, t = 0) an example is decided once every domain has
every row > t, or a point of the ball with some :math:`g_r \le t` is found (ties count); without it, the search
runs until each row's bound is within a relative ``gap`` (default 1e-6, :data:`~.bab_search.GAP`) of the best value
found: :math:`U_r - \mathrm{gap} \cdot \max(1, |U_r|)` (with the default, the exact minimum), or above ``enough``
when given (the refinement's per-neuron searches: a neuron proven stable needs no tighter bound). Candidate points
(bound minimizers, short descents, the leaves' LP solutions) are replayed through the network in its dtype; the
best per row is ``Bounds.points`` (n, m, d), NaN where none (the API replays them again).

Options: ``time_limit`` (seconds per example), ``domain_batch`` (domains bounded per step; the API's
``batch_size`` counts examples), ``steps`` (alpha-/beta-CROWN iterations per bound; 0 is CROWN) and
``branching`` ("fsb", "babsr" or "widest"), all three by default per split (:data:`DEFAULTS`: ReLU domains carry
slopes and multipliers worth optimizing, input boxes are many and cheap; on ACAS Xu the widest coordinate decided 4
of 7 hard instances in 20 s where BaBSR's input score decided none: it keeps splitting coordinates whose share of
the linear bound is large but whose halves bound no better; on oval21 "fsb" took cifar_deep_kw img5533 from 58 s
to 14 s and cifar_wide_kw img19 from 73 s to 32 s against "babsr", and tied on MNIST MLPs), ``max_domains``
(open domains kept; default: what fits in :func:`domain_memory`, a share of the memory free on the network's
device when the search starts, at the bytes one stored domain takes: a ReLU domain keeps its fields only at the
neurons unstable at the root, :mod:`.bab_relu`; on oval21 cifar_wide_kw img6762 the worst open bound reached
-0.0088 in 720 s with 8,000 domains against -0.0146 with the 1,900 of a fixed 1 GiB; past half of it the search
pops the domains nearest to closing first, :mod:`.bab_search`), ``split``, ``stop_at``, ``refine`` (default True;
see below),
``progress`` (a tqdm bar: domains bounded and open, global lower bound, best value), ``search_dtype``
(:data:`SEARCH_DTYPE`, float32: the slope and multiplier searches and the heuristics; every bound is computed in
the network's dtype from what they found; None: the network's dtype throughout) and ``recompute_intermediate``
(False: a child keeps its parent's pre-activation bounds, the split neuron's clamped; True: the layers after the
split are bounded again, :mod:`.bab_relu`). Out of time or of
domains, the bound so far is returned (still sound) with status "time_limit" (``certify``: unknown); "optimal"
when decided; "error" when a leaf could not be settled (solver failure, or a tie within rounding). ``upper``
(``compute_upper=True``): the root's alpha-CROWN upper bounds, not refined. ``intermediate=`` bounds the root;
``return_intermediate`` returns the root's.
``info`` (lists, one entry per example): domains bounded, domains still open, undecided leaves, seconds, the
split used, the neurons made stable by refinement.

**Refinement** (ReLU splitting with a ``time_limit`` and at least two ReLU layers): a search that has not decided
within :data:`REFINE_AFTER` of the time limit stops; the pre-activation bounds of ReLU layers 1, 2, ... are
tightened in turn by branch and bound on the network cut there, for :data:`REFINE_SHARE` of the time limit in all
(:func:`~.refine.refine_layers`: proven bounds; it ends early once alpha-CROWN with them decides), and the search
starts again from a root bounded with them, keeping the counterexample candidates it had. α,β-CROWN does the same
with a MIP solver's claimed bounds. On VNN-COMP 2021 mnistfc (``bench/bab.py``) bab decides 74 of the 90 instances
(55 without refinement): every one a 2021 tool decided and two none did (256x4 prop_12_0.05, prop_14_0.03), e.g.
256x4 prop_0 in 48 s and 256x6 prop_0 in 150 s (α,β-CROWN in 2021, on a GPU: 53 s and 260 s).
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from .._validation import check_choice, check_positive_int
from ..sets import Ball
from .bab_input import InputSplit
from .bab_relu import ReluSplit
from .bab_search import GAP, Search, run
from .branching import BRANCHING
from .methods import COMMON_OPTIONS, Bounds, check_stop_at, check_time_limit
from .network import Network
from .operators import BatchLinear, Linear
from .refine import MAX_NEURONS, refine_layers, unstable_count

NORMS = ("inf", 1)
OPTIONS = COMMON_OPTIONS | {"time_limit", "stop_at", "domain_batch", "max_domains", "branching", "split", "steps",
                            "refine", "progress", "gap", "enough", "search_dtype",
                            "recompute_intermediate"}
SOLVER = True
EXACT = True  # without stop_at, an example that ends "optimal" has its exact minimum, to a gap of 1e-6 (|v| + 1)
#               (the default gap; a larger gap or enough= trade that for time)
TAKES_TIME_LIMIT = True
TAKES_STOP_AT = True
TAKES_SPLITS = False
SPLITS = ("auto", "relu", "input")
INPUT_SPLIT_DIMENSIONS = 20
DEFAULTS = {"relu": {"domain_batch": 64, "steps": 10, "branching": "fsb"},
            "input": {"domain_batch": 512, "steps": 5, "branching": "widest"}}
DOMAIN_MEMORY_SHARE = 0.25  # of the free memory: the open domains' default cap (max_domains=None); on the CPU
#                             at most free / (2 * cores): one search per core may run side by side
DOMAIN_MEMORY = 1 << 30  # bytes of open domains by default where the free memory cannot be read
SEARCH_DTYPE = torch.float32  # the dtype of the slope searches and of the heuristics (search_dtype=)
REFINE_AFTER, REFINE_SHARE = 0.1, 0.5  # shares of the time limit: first search, then refinement (refine=)


def _example_net(net, i):
    """The network of example i with its last operator shared (a batch of domains of one example)."""
    op = net.affine[-1]
    if not op.batched:
        return net
    if not isinstance(op, BatchLinear):
        raise ValueError(f"bab: unsupported per-example last operator {op!r}")
    return Network(net.affine[:-1] + [Linear(op.weight[i], op.bias[i])], False, net.in_shape)


def _one_ball(ball, x, i):
    """The ball of example i with a scalar radius (it then serves any number of domains of that example)."""
    b = ball.flat(x).select(slice(i, i + 1))
    return Ball(b.eps if isinstance(b.eps, float) else float(b.eps[0]), b.norm, b.lower, b.upper)


def _choose_split(split, ball, x, stop_at):
    if split == "input" and ball.norm != "inf":
        raise ValueError(f"split='input' needs an l_inf ball (a box); got norm={ball.norm!r}: use split='relu'")
    if split != "auto":
        return split
    lo, hi = ball.box(x)
    free = int((hi > lo).sum())
    return "input" if ball.norm == "inf" and 0 < free <= INPUT_SPLIT_DIMENSIONS and stop_at is not None else "relu"


def free_memory(device) -> int | None:
    """Bytes free on ``device``: CUDA's free memory, or on the CPU the kernel's MemAvailable (/proc/meminfo,
    Linux); None where it cannot be read."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def domain_memory(device) -> int:
    """The bytes open domains may take by default on ``device``: :data:`DOMAIN_MEMORY_SHARE` of its free memory,
    on the CPU at most half of each core's share of it (:data:`DOMAIN_MEMORY` where it cannot be read)."""
    free = free_memory(device)
    if free is None:
        return DOMAIN_MEMORY
    share = DOMAIN_MEMORY_SHARE if torch.device(device).type == "cuda" else \
        min(DOMAIN_MEMORY_SHARE, 0.5 / (os.cpu_count() or 1))
    return int(share * free)


def bounds(net, x, ball, *, compute_upper=True, intermediate=None, return_intermediate=False, time_limit=None,
           stop_at=None, domain_batch=None, max_domains=None, branching=None, split="auto", steps=None,
           refine=True, progress=False, gap=GAP, enough=None, search_dtype=SEARCH_DTYPE,
           recompute_intermediate=False) -> Bounds:
    """Branch-and-bound lower bounds on every output row of ``net`` over the ball (see the module docstring)."""
    time_limit, stop_at = check_time_limit(time_limit), check_stop_at(stop_at)
    enough = check_stop_at(enough, "enough")
    if domain_batch is not None:
        domain_batch = check_positive_int(domain_batch, "domain_batch", minimum=2)
    if steps is not None:
        steps = check_positive_int(steps, "steps", minimum=0)
    if max_domains is not None:
        max_domains = check_positive_int(max_domains, "max_domains")
    if branching is not None:
        check_choice(branching, BRANCHING, "branching")
    check_choice(split, SPLITS, "split")
    if search_dtype is not None and search_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"search_dtype must be torch.float32, torch.float64 or None; got {search_dtype!r}")
    search_dtype = search_dtype or net.dtype
    if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not 0 <= gap < float("inf"):
        raise ValueError(f"gap must be a finite number >= 0 (a relative gap); got {gap!r}")
    for name, value in (("progress", progress), ("refine", refine),
                        ("recompute_intermediate", recompute_intermediate)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False; got {value!r}")
    n, m = x.shape[0], net.out_features
    lower = x.new_empty(n, m)
    upper = x.new_empty(n, m) if compute_upper else None
    points = x.new_full((n, m, x.shape[1]), float("nan"))
    status, used = np.empty(n, dtype=object), []
    info = {"domains": [], "open": [], "undecided": [], "seconds": [], "split": [], "refined": []}
    for i in range(n):
        tic = time.perf_counter()
        example_net, example_ball, centre = _example_net(net, i), _one_ball(ball, x, i), x[i:i + 1]
        mode = _choose_split(split, example_ball, centre, stop_at)
        default = DEFAULTS[mode]
        batch = default["domain_batch"] if domain_batch is None else domain_batch

        def start(deadline, given):
            common = {"steps": default["steps"] if steps is None else steps, "compute_upper": compute_upper,
                      "branching": default["branching"] if branching is None else branching,
                      "intermediate": given, "search_dtype": search_dtype}
            strategy = InputSplit(example_net, centre, example_ball, **common) if mode == "input" else \
                ReluSplit(example_net, centre, example_ball, recompute=recompute_intermediate, **common)
            search = Search(example_net, centre, example_ball, stop_at, deadline, max_domains, progress,
                            float(gap), enough, search_dtype,
                            memory=None if max_domains else domain_memory(example_net.device))
            return strategy, search

        refining = refine and mode == "relu" and time_limit is not None and len(example_net.relu_sizes) >= 2
        given = None if intermediate is None else [(lo[i:i + 1], hi[i:i + 1]) for lo, hi in intermediate]
        strategy, search = start(None if time_limit is None else tic + (REFINE_AFTER if refining else 1) * time_limit,
                                 given)
        status[i] = run(search, strategy, batch)
        bounded, stable = search.bounded, 0
        if refining and status[i] == "time_limit":
            layers = range(1, len(example_net.relu_sizes))
            if any(0 < unstable_count(strategy.intermediate, k) <= MAX_NEURONS for k in layers):
                refined, stable = refine_layers(example_net, centre, example_ball, strategy.intermediate,
                                                REFINE_SHARE * time_limit, stop_at,
                                                {"search_dtype": search_dtype,
                                                 "recompute_intermediate": recompute_intermediate})
                found = search.points[torch.isfinite(search.points).all(1)]
                strategy, search = start(tic + time_limit, refined)
                search.offer(found)
                status[i] = run(search, strategy, batch)
                bounded += search.bounded
            else:  # nothing to refine: the first search goes on
                search.extend(tic + time_limit)
                status[i] = run(search, strategy, batch, root=False)
                bounded = search.bounded
        lower[i], points[i] = search.lower(), search.points
        if compute_upper:
            upper[i] = strategy.upper[0]
        used.append(strategy.intermediate)
        for key, value in (("domains", bounded), ("open", len(search.domains)), ("undecided", search.undecided),
                           ("seconds", time.perf_counter() - tic), ("split", mode), ("refined", stable)):
            info[key].append(value)
    inter = [(torch.cat([u[k][0] for u in used]), torch.cat([u[k][1] for u in used]))
             for k in range(len(net.relu_sizes))]
    return Bounds(lower=lower, upper=upper, intermediate=inter if return_intermediate else None, points=points,
                  status=status.astype(str), info=info)
