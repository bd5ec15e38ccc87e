"""JAX's persistent compilation cache for the command-line runs (and the sweep workers they start).

A rerun, a resumed run or the next point of a learning-rate sweep compiles the same XLA programs again;
with the cache it loads them (on a CPU, seconds to minutes per run). ``DKS_JAX_XLA_CACHE`` names the folder
(default ``~/.cache/dks_jax/xla``); ``DKS_JAX_XLA_CACHE=off`` disables it. A folder chosen through JAX's
own setting (``JAX_COMPILATION_CACHE_DIR``) wins.
"""

from __future__ import annotations

import os
from pathlib import Path


def enable() -> str | None:
    """Points JAX at the cache folder (before the first compilation); returns it, or None when off."""
    import jax  # pylint: disable=g-import-not-at-top

    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    folder = os.environ.get("DKS_JAX_XLA_CACHE", str(Path.home() / ".cache" / "dks_jax" / "xla"))
    if folder.strip().lower() in ("", "0", "off", "none"):
        return None
    jax.config.update("jax_compilation_cache_dir", folder)
    return folder
