"""The bound engine against the values of its pre-rebuild, dense-matrix version (``data/pre_rebuild_margins.json``,
written by ``data/make_pre_rebuild_margins.py`` at commit 2ba2bec) on the 60 seeded instances of the bound tests.

Bounding every neuron (``skip_stable=False``) reproduces CROWN to 1e-9; the default, which takes a neuron's
stability from one IBP step where that proves it, may only be tighter. The dual keeps the published method by
default (every neuron), equal to before. alpha-CROWN now also optimizes the intermediate layers' slopes: never
looser than before (the search starts at CROWN and keeps the best bound per row)."""
import json
from pathlib import Path

import pytest
import torch
from verify_helpers import one_thread, random_instance  # noqa: F401

from robustopt.verify import margin_bounds

REFERENCE = json.loads((Path(__file__).parent / "data" / "pre_rebuild_margins.json").read_text())
CASES = {row["seed"]: row for row in REFERENCE["instances"]}


def _old(row, method):
    return torch.tensor([[float("inf") if v is None else v for v in r] for r in row[method]], dtype=torch.float64)


@pytest.mark.parametrize("seed", sorted(CASES))
def test_values_equal_or_tighter_than_the_dense_engine(seed, one_thread):
    model, x, y, k, norm, eps = random_instance(seed)
    row = CASES[seed]
    crown_old, dual_old, alpha_old = (_old(row, m) for m in ("crown", "dual", "alpha-crown"))
    finite = torch.isfinite(crown_old)
    every_neuron = margin_bounds(model, x, y, eps, norm, method="crown", skip_stable=False)
    torch.testing.assert_close(every_neuron[finite], crown_old[finite], rtol=0, atol=1e-9)
    assert (margin_bounds(model, x, y, eps, norm, method="crown")[finite] >= crown_old[finite] - 1e-9).all()
    dual = margin_bounds(model, x, y, eps, norm, method="dual")
    torch.testing.assert_close(dual[finite], dual_old[finite], rtol=0, atol=1e-9)
    assert (margin_bounds(model, x, y, eps, norm, method="alpha-crown")[finite] >= alpha_old[finite] - 1e-9).all()
