"""Writes pre_rebuild_margins.json: the margins of the bound engine before it was made matrix-free.

Run with the robustopt of commit 2ba2bec (the last one with the dense engine) on the path, from the repository
root of a later checkout (for ``tests/verify_helpers.py``):

    git worktree add /tmp/old 2ba2bec
    PYTHONPATH=/tmp/old python tests/data/make_pre_rebuild_margins.py 2ba2bec tests/data/pre_rebuild_margins.json
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from verify_helpers import random_instance  # noqa: E402

from robustopt.verify import margin_bounds  # noqa: E402

torch.set_num_threads(1)
out = {"commit": sys.argv[1], "instances": []}
for seed in range(60):
    model, x, y, k, norm, eps = random_instance(seed)
    row = {"seed": seed}
    for method in ("crown", "dual", "alpha-crown"):
        b = margin_bounds(model, x, y, eps, norm, method=method)
        row[method] = [[None if v == float("inf") else float(v) for v in r] for r in b.tolist()]
    out["instances"].append(row)
Path(sys.argv[2]).write_text(json.dumps(out))
