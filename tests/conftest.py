"""Shared test helpers: the config builder and the config-file loader (import them with
``from conftest import make_config, load_config``).

Test tiers: the README's command runs the fast tier (``-m "not slow"``, a few minutes on 2 cores);
tests that train for real, start subprocesses or several processes carry ``@pytest.mark.slow`` and run
in ``.ci/run``'s second tier.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# XLA's persistent compilation cache, shared by the test processes (xdist workers and the subprocesses
# tests start, through the environment): many tests train the same tiny configs, and compiling their
# steps again would be most of the suite's time. Entries are keyed by the program and the JAX version.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".pytest_cache" / "xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# XLA warns at every cache hit that it cannot check executable versions (the cache key holds them), and
# on AVX-512 hosts it logs two false "machine type" errors per cached program it loads (it compares LLVM
# tuning flags with CPU features; jax-ml/jax#38445): the CLI tests check that stderr holds one line.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Tests measure real solves: the optional on-disk cache of solved parameters stays off, for this
# process and every subprocess a test starts (tests of the cache turn it on in a temporary folder).
os.environ["DKS_JAX_CACHE"] = "off"

import ml_collections  # noqa: E402  (after the environment above, which JAX reads at import)

from dks_jax import configlib  # noqa: E402


def make_config(**fields: Any) -> ml_collections.ConfigDict:
    """``configlib.base_config()`` with ``fields`` set (dotted paths via ``**{"optimizer.name": ...}``).

    Values are not validated, so tests can build invalid configs on purpose.
    """
    return configlib.set_fields(configlib.base_config(), fields)


def load_config(spec: str, **fields: Any) -> ml_collections.ConfigDict:
    """Loads ``configs/<spec>`` (``"mnist.py:tiny"``) as ``--config=configs/<spec>`` would, then sets
    ``fields`` as ``--config.<path>=...`` would (not validated here; the loop validates)."""
    return configlib.set_fields(configlib.load_config_file(str(CONFIGS / spec)), fields)


def dict_config(**fields: Any) -> dict[str, Any]:
    """A plain-dict model config (what ``nets.build_model`` also takes); fields of a section may be given
    flat: ``num_heads=4`` goes to ``transformer.num_heads``, ``c_val_0_target`` to ``tat``, and so on."""
    sections: dict[str, set[str]] = {}
    for f in configlib.schema():
        section, _, name = f.path.rpartition(".")
        if section in ("transformer", "tat", "dks"):
            sections.setdefault(section, set()).add(name)
    config: dict[str, Any] = {}
    for key, value in fields.items():
        owner = next((s for s, names in sections.items() if key in names), None)
        if owner is None:
            config[key] = value
        else:
            config.setdefault(owner, {})[key] = value
    return config
