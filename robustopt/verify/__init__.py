r"""Certify ReLU networks: lower bounds on the margin over a perturbation ball.

For an example (x, y), a target class j and the ball B (a :class:`robustopt.sets.Ball`: an
:math:`\ell_p` ball intersected with the input box), every method returns a proven lower bound on
:math:`\min_{x' \in B} f_y(x') - f_j(x')`, and the chain

    IBP, CROWN, dual  <=  LP  <=  MILP (exact)  <=  margin at any attack point

holds (``alpha-crown >= crown``; ``dual`` equals CROWN with the "same-slope" relaxation).

Pieces:

- :func:`network` / :class:`Network` (:mod:`.network`): the canonical form, affine operators
  (:mod:`.operators`) alternating with ReLUs; :meth:`Network.with_spec` folds a specification C.
- :mod:`.methods`: **the method contract** every bound method follows (read it before adding one),
  the :class:`Bounds` result and the registry ``METHODS`` the API dispatches on.
- one module per method: ``ibp``, ``crown``, ``alpha_crown``, ``dual``, ``lp``, ``lp_cvxpy``, ``milp``.
- the API: ``logit_bounds``, ``margin_bounds``, ``spec_bounds`` (:mod:`.api`), ``certify``
  (:class:`CertifyResult`) and ``certified_radius`` (:mod:`.certification`).

Example::

    from robustopt.verify import certify, margin_bounds
    bounds = margin_bounds(model, x, y, eps=0.02, method="crown")   # (n, k), +inf in column y
    result = certify(model, X, y, eps=0.02, method="alpha-crown")   # PGD first, then the bounds
    result.status, result.certified_accuracy
"""
from importlib import import_module

from .methods import METHODS, Bounds, get_method, run_method
from .network import Network, network

_API = {"logit_bounds": "api", "margin_bounds": "api", "spec_bounds": "api", "certify": "certification",
        "CertifyResult": "certification", "certified_radius": "certification"}

__all__ = ["network", "Network", "Bounds", "METHODS", "get_method", "run_method", *sorted(_API)]


def __getattr__(name):
    if name in _API:
        return getattr(import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'robustopt.verify' has no attribute {name!r}")
