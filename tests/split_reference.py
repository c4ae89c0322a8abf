"""An independent exact reference for the split tests: the minimum of c . f(x') over a ball (l_inf or l_1,
with or without the box) and a set of ReLU split constraints, as a small MILP solved with
``scipy.optimize.milp`` (dense matrices, interval big-M). Only for tiny networks."""
import numpy as np
from scipy.optimize import Bounds as VarBounds
from scipy.optimize import LinearConstraint, milp
from scipy.sparse import lil_array


def exact_minimum(net, example, x, c, eps, norm, lower, upper, bounds, splits=None):
    """min c . g(x') for one example: ``net`` a canonical Network ending with an affine layer (its last
    operator may be per example: ``example`` picks it), ``x`` flat (d,), ``c`` (m,), ``bounds`` [(l_k, u_k)]
    numpy per ReLU layer valid on the ball (big-M), ``splits`` [(h_k,) int] or None. Returns +inf when the
    split domain is empty."""
    mats = net.matrices(example=example, sparse=False)
    d = x.shape[0]
    widths = [w.shape[0] for w, _ in mats[:-1]]
    # variables: x' (d), [l_1 split: p, q (d each)], then per layer z (h), a (h), delta (h)
    n_var = d + (2 * d if norm == 1 else 0) + 3 * sum(widths)
    rows, lo_c, hi_c = [], [], []

    def add(coefs, lo, hi):
        row = lil_array((1, n_var))
        for j, v in coefs:
            row[0, j] = row[0, j] + v
        rows.append(row)
        lo_c.append(lo)
        hi_c.append(hi)

    lb, ub = np.full(n_var, -np.inf), np.full(n_var, np.inf)
    integrality = np.zeros(n_var)
    box_lo = np.full(d, -np.inf) if lower is None else np.broadcast_to(np.asarray(lower, float), (d,))
    box_hi = np.full(d, np.inf) if upper is None else np.broadcast_to(np.asarray(upper, float), (d,))
    lb[:d], ub[:d] = box_lo, box_hi
    if norm == "inf":
        lb[:d], ub[:d] = np.maximum(box_lo, x - eps), np.minimum(box_hi, x + eps)
        start = d
    else:  # x' = x + p - q, p, q >= 0, sum(p + q) <= eps
        p, q = d, 2 * d
        lb[p:p + 2 * d] = 0.0
        for i in range(d):
            add([(i, 1.0), (p + i, -1.0), (q + i, 1.0)], x[i], x[i])
        add([(j, 1.0) for j in range(p, p + 2 * d)], -np.inf, eps)
        start = 3 * d
    prev = list(range(d))
    for k, (w, b) in enumerate(mats[:-1]):
        h = w.shape[0]
        z, a, dl = start, start + h, start + 2 * h
        start += 3 * h
        l, u = bounds[k]
        for j in range(h):
            add([(z + j, 1.0)] + [(prev[i], -w[j, i]) for i in np.flatnonzero(w[j])], b[j], b[j])
            lb[z + j], ub[z + j] = l[j], u[j]
            lb[a + j], ub[a + j] = 0.0, max(u[j], 0.0)
            lb[dl + j], ub[dl + j] = 0.0, 1.0
            integrality[dl + j] = 1
            s = 0 if splits is None else int(splits[k][j])
            if s > 0:
                lb[dl + j] = 1.0
            elif s < 0:
                ub[dl + j] = 0.0
            add([(a + j, 1.0), (z + j, -1.0)], 0.0, np.inf)  # a >= z
            add([(a + j, 1.0), (z + j, -1.0), (dl + j, -min(l[j], 0.0))], -np.inf, -min(l[j], 0.0))  # a <= z - l(1-d)
            add([(a + j, 1.0), (dl + j, -max(u[j], 0.0))], -np.inf, 0.0)  # a <= u d
        prev = list(range(a, a + h))
    w, b = mats[-1]
    obj = np.zeros(n_var)
    for i, v in zip(prev, c @ w):
        obj[i] += v
    A = lil_array((len(rows), n_var))
    for r, row in enumerate(rows):
        A[r] = row
    res = milp(obj, constraints=LinearConstraint(A.tocsr(), lo_c, hi_c), integrality=integrality,
               bounds=VarBounds(lb, ub), options={"mip_rel_gap": 1e-9})
    if res.status == 2:  # infeasible
        return np.inf
    assert res.status == 0, res.message
    return float(res.fun + c @ b)


def interval_bounds(net, x, ball):
    """Sound pre-activation bounds (IBP) for the big-M constants: per example, a list of numpy (l_k, u_k)."""
    from robustopt.verify import run_method

    res = run_method("ibp", net, x, ball, return_intermediate=True)
    return [[(lo[i].numpy(), hi[i].numpy()) for lo, hi in res.intermediate] for i in range(x.shape[0])]
