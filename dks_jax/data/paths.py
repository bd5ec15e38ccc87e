"""Where datasets and decoded-array caches live on disk."""

from __future__ import annotations

import os
import pathlib

DATA_DIR_ENV = "DKS_JAX_DATA_DIR"
CACHE_DIR_ENV = "DKS_JAX_CACHE_DIR"

# dks_jax/data/paths.py -> parents[2] is the repository root.
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Chooses the folder that file-based loaders read from.

    Args:
        data_dir: Explicit folder; wins when given.

    Returns:
        `data_dir` if given, else `$DKS_JAX_DATA_DIR` if set and non-empty, else
        `<repo root>/../shared/data`. The folder is not required to exist; loaders
        report a missing dataset themselves, naming the paths they tried.
    """
    if data_dir is not None:
        return pathlib.Path(data_dir).expanduser()
    from_env = os.environ.get(DATA_DIR_ENV)
    if from_env:
        return pathlib.Path(from_env).expanduser()
    return DEFAULT_DATA_DIR


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Chooses the folder for decoded-array caches (e.g. CIFAR-10 from JPEG).

    Args:
        cache_dir: Explicit folder; wins when given.

    Returns:
        `cache_dir` if given, else `$DKS_JAX_CACHE_DIR` if set, else
        `$XDG_CACHE_HOME/dks_jax` (default `~/.cache/dks_jax`).
    """
    if cache_dir is not None:
        return pathlib.Path(cache_dir).expanduser()
    from_env = os.environ.get(CACHE_DIR_ENV)
    if from_env:
        return pathlib.Path(from_env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return pathlib.Path(xdg).expanduser() / "dks_jax"
