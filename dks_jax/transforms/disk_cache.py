"""An optional on-disk cache of solved local problems, shared by processes.

A local problem (activation, method, its local conditions and targets) determines the solution
completely, so its key is a hash of: the activation's *definition* (the jaxpr of ``phi`` traced on a
float64 scalar, its constants, and its registry metadata), the free parameters and fixed values, the
conditions and their targets (exact float bits), whether the public package's root or the canonical
one is wanted, and ``SOLVER_VERSION``. The network enters through the local targets, which its ``M`` and
the network-level targets determine. Re-registering a name with another function changes the key.

Each entry is one small JSON file written to a temporary name and renamed into place, so concurrent
processes never see a partial entry; unreadable entries are ignored (and solved again).

Location: ``$DKS_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/dks_jax``, else ``~/.cache/dks_jax``. Disable with
``DKS_JAX_CACHE=off`` (or ``0``/``false``/``no``). It is a convenience: solves are fast without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from typing import Any, Sequence

import numpy as np

from dks_jax import activations

log = logging.getLogger(__name__)

# Bump when the solver's choice of root or its numerics change, so old entries are not reused.
SOLVER_VERSION = "2"
_OFF = ("0", "off", "false", "no")


def enabled() -> bool:
    """Whether the cache is on (``DKS_JAX_CACHE`` is not one of 0/off/false/no)."""
    return os.environ.get("DKS_JAX_CACHE", "on").strip().lower() not in _OFF


def directory() -> str:
    """The cache folder (not created until something is written)."""
    explicit = os.environ.get("DKS_JAX_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dks_jax")


def definition_fingerprint(spec: activations.ActivationSpec) -> str:
    """A hash of what ``phi`` computes (its traced program) and of its registry metadata."""
    import jax

    with jax.enable_x64(True):
        args = (jax.ShapeDtypeStruct((), np.float64),) * (1 + len(spec.shape_params))
        names = tuple(spec.shape_params)
        closed = jax.make_jaxpr(lambda x, *s: spec.fn(x, **dict(zip(names, s))))(*args)
    h = hashlib.sha256(str(closed.jaxpr).encode())
    for const in closed.consts:
        h.update(np.asarray(const).tobytes())
    meta = [spec.kinks, spec.kink_order, sorted((k, float(v).hex()) for k, v in spec.shape_params.items()),
            spec.positive_homogeneous, spec.piecewise_linear, spec.period]
    h.update(repr(meta).encode())
    return h.hexdigest()


def key(fingerprint: str, parts: Sequence[Any]) -> str:
    """The entry name for a problem: floats enter by their exact bits."""
    def norm(v):
        if isinstance(v, float):
            return float(v).hex()
        if isinstance(v, (tuple, list)):
            return [norm(x) for x in v]
        return v

    payload = json.dumps([SOLVER_VERSION, fingerprint, norm(list(parts))], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def load(entry: str) -> tuple[float, ...] | None:
    """The cached theta for ``entry``, or None (missing, unreadable or disabled)."""
    if not enabled():
        return None
    path = os.path.join(directory(), entry[:2], entry + ".json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return tuple(float.fromhex(v) for v in data["theta"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store(entry: str, theta: Sequence[float], note: str = "") -> None:
    """Writes ``theta`` atomically (temporary file, then rename); failures only log."""
    if not enabled():
        return
    folder = os.path.join(directory(), entry[:2])
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"theta": [float(v).hex() for v in theta], "note": note}, f)
        os.replace(tmp, os.path.join(folder, entry + ".json"))
    except OSError as err:
        log.debug("Could not write the solve cache in %s: %s", folder, err)
