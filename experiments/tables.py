"""The registry of reproducible result tables, and helpers to write them.

A *table* is a function that computes something and returns its markdown body and the figures it saved.
``python -m experiments.reproduce --table=NAME --workdir=DIR`` runs it and writes ``DIR/NAME.md`` (a
generated header, then the body) beside the figures ``DIR/NAME_*.png``.

Registering a table
-------------------
Put the function in a module of the ``experiments`` package whose name ends in ``_tables`` (for example
``experiments/training_tables.py``); ``experiments.reproduce`` imports every such module, so nothing else
needs editing. Decorate the function::

    from pathlib import Path
    from experiments import tables

    @tables.register_table("mnist_depth", group="training",
                           title="MNIST: validation accuracy against depth")
    def mnist_depth(workdir: Path, quick: bool) -> tables.TableResult:
        ...                                   # train, evaluate
        fig_path = workdir / "mnist_depth_accuracy.png"
        tables.save_figure(fig, fig_path)     # PNG, Agg backend, small dpi
        body = tables.markdown_table(["depth", "accuracy"], rows) + "\n\n" + \
            tables.figure_link(fig_path, "accuracy against depth")
        return tables.TableResult(markdown=body, figures=[fig_path], data={"rows": rows})

The contract:

* ``fn(workdir: Path, quick: bool) -> TableResult``. ``workdir`` exists; write figures there, named
  ``<table name>_<something>.png``, and reference them from the markdown by their bare file name
  (``figure_link`` does that). ``quick`` asks for a reduced grid (tests, smoke runs).
* Return the markdown *body* only: the runner writes the title (from the registration), the command
  that produced the file, the machine, the date and the wall time above it. Never type results in:
  compute them (published values to compare against belong in a named constant with a citation).
* ``group`` names a family of tables: ``--table=all_<group>`` runs all of them (``all_theory`` for
  the kernel/solver tables of ``experiments.theory_tables``); ``--table=all`` runs every table.
* ``TableResult.data`` (optional, JSON-serializable) is written to ``DIR/NAME.json`` for programs.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import math
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import matplotlib

matplotlib.use("Agg")  # Headless: every figure is written to a PNG file, nothing is shown.

FIGURE_DPI = 80
_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclasses.dataclass
class TableResult:
    """What a table function returns.

    Attributes:
      markdown: The markdown body (no title, no provenance header: the runner adds both).
      figures: Paths of the PNG files the function saved in ``workdir``.
      data: Optional JSON-serializable values, written to ``<workdir>/<name>.json``.
    """

    markdown: str
    figures: list[Path] = dataclasses.field(default_factory=list)
    data: dict[str, Any] | None = None


TableFn = Callable[[Path, bool], TableResult]


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """A registered table.

    Attributes:
      name: Registry name; the output files are ``NAME.md``, ``NAME_*.png`` and ``NAME.json``.
      fn: ``fn(workdir, quick) -> TableResult``.
      group: Family of tables, selected together by ``--table=all_<group>``.
      title: The markdown title.
    """

    name: str
    fn: TableFn
    group: str
    title: str


class UnknownTableError(ValueError):
    """A requested table name is not registered."""


_REGISTRY: dict[str, TableSpec] = {}


def register_table(name: str, *, group: str, title: str) -> Callable[[TableFn], TableFn]:
    """Decorator registering ``fn(workdir, quick) -> TableResult`` under ``name``.

    Args:
      name: Lower-case identifier, not starting with ``all`` (reserved for groups).
      group: Family of tables (``theory``, ``training``, ...), selected by ``--table=all_<group>``.
      title: The markdown title of the generated file.

    Returns:
      The decorator (it returns the function unchanged).

    Raises:
      ValueError: Invalid name or group, or a different function already registered under ``name``.
    """
    if not _NAME_PATTERN.match(name) or name == "all" or name.startswith("all_"):
        raise ValueError(f"register_table: invalid table name {name!r}: use lower-case letters, digits "
                         "and underscores, starting with a letter; 'all' and 'all_*' are reserved.")
    if not _NAME_PATTERN.match(group):
        raise ValueError(f"register_table: invalid group {group!r} for table {name!r}.")

    def decorator(fn: TableFn) -> TableFn:
        old = _REGISTRY.get(name)
        # Re-importing a module (importlib.reload) registers the same function again: allowed.
        same = old is not None and (old.fn.__module__, old.fn.__qualname__) == (fn.__module__,
                                                                                fn.__qualname__)
        if old is not None and not same:
            raise ValueError(f"register_table: a table named {name!r} is already registered (by "
                             f"{old.fn.__module__}.{old.fn.__qualname__}).")
        _REGISTRY[name] = TableSpec(name=name, fn=fn, group=group, title=title)
        return fn

    return decorator


def unregister_table(name: str) -> None:
    """Removes ``name`` from the registry (for tests registering temporary tables)."""
    _REGISTRY.pop(name, None)


def list_tables() -> list[TableSpec]:
    """Every registered table, in registration order."""
    return list(_REGISTRY.values())


def groups() -> list[str]:
    """The registered groups, in order of first registration."""
    return list(dict.fromkeys(spec.group for spec in _REGISTRY.values()))


def valid_selectors() -> list[str]:
    """Everything ``--table`` accepts: table names, ``all_<group>`` and ``all``."""
    return [spec.name for spec in _REGISTRY.values()] + [f"all_{g}" for g in groups()] + ["all"]


def resolve(selectors: Iterable[str]) -> list[TableSpec]:
    """Table names, ``all_<group>`` or ``all`` to the tables they select (deduplicated, in order).

    Raises:
      UnknownTableError: For an unknown selector; the message lists the valid ones.
    """
    chosen: dict[str, TableSpec] = {}
    for selector in selectors:
        selector = selector.strip()
        if selector == "all":
            matches = list(_REGISTRY.values())
        elif selector.startswith("all_") and selector[4:] in groups():
            matches = [s for s in _REGISTRY.values() if s.group == selector[4:]]
        elif selector in _REGISTRY:
            matches = [_REGISTRY[selector]]
        else:
            raise UnknownTableError(f"Unknown table {selector!r}. Valid tables: "
                                    f"{', '.join(valid_selectors())}.")
        for spec in matches:
            chosen.setdefault(spec.name, spec)
    return list(chosen.values())


# ----------------------------------------------------------------------------------------------
# Provenance.


def machine_description() -> str:
    """Node, processor, CPU count, OS and library versions of this machine (one line)."""
    import jax
    import numpy as np

    processor = platform.processor() or platform.machine() or "unknown processor"
    return (f"node `{platform.node()}`, processor `{processor}`, {os.cpu_count()} CPUs, "
            f"{platform.platform()}; Python {platform.python_version()}, jax {jax.__version__} "
            f"({jax.default_backend()}), numpy {np.__version__}")


@functools.lru_cache(maxsize=None)
def code_version(repo: Path | None = None) -> str:
    """``git describe --always --dirty`` of the checkout holding this file, or 'unknown'.

    Cached: one process reports one version (the one it started with), even if commits land meanwhile.
    """
    repo = repo or Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=repo, capture_output=True,
                             text=True, timeout=10, check=True)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def header(title: str, command: str, wall_seconds: float, quick: bool | None,
           started: datetime.datetime) -> str:
    """The generated header of a markdown file: title, command, machine, date, wall time."""
    mode = "" if quick is None else f"; mode: {'quick' if quick else 'full'}"
    return "\n".join([
        f"# {title}",
        "",
        "<!-- Generated by experiments/reproduce.py: edit the code and rerun, not this file. -->",
        f"- Command: `{command}`",
        f"- Machine: {machine_description()}",
        f"- Date: {started.isoformat(timespec='seconds')}; wall time: {wall_seconds:.1f} s{mode}",
        f"- Code: git `{code_version()}`",
        "",
    ])


def command_line(argv: Sequence[str]) -> str:
    """The command as typed: ``python -m experiments.reproduce`` and the (shell-quoted) arguments."""
    import shlex

    return " ".join(["python -m experiments.reproduce", *(shlex.quote(a) for a in argv)])


def now() -> datetime.datetime:
    """The current time, UTC, with its offset (for headers)."""
    return datetime.datetime.now(datetime.timezone.utc)


# ----------------------------------------------------------------------------------------------
# Markdown and figure helpers for table functions.


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells are converted with ``str`` ('|' escaped)."""
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(cell(c) for c in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"markdown_table: row {row!r} has {len(row)} cells for {len(columns)} "
                             "columns.")
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 12) -> str:
    """A float with ``digits`` decimals; '—' for None, 'inf'/'nan' spelled out."""
    if value is None:
        return "—"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"


def fmt_sci(value: float | None, digits: int = 1) -> str:
    """A float in scientific notation (for differences and residuals); '—' for None."""
    if value is None:
        return "—"
    return f"{value:.{digits}e}"


def figure_link(path: Path, caption: str) -> str:
    """A markdown image referencing the figure by its bare file name (it sits beside the markdown)."""
    return f"![{caption}]({Path(path).name})"


def save_figure(fig: Any, path: Path, dpi: int = FIGURE_DPI) -> Path:
    """Saves a matplotlib figure as a small PNG and closes it.

    Args:
      fig: A ``matplotlib.figure.Figure``.
      path: Destination, ending in ``.png``.
      dpi: Resolution (80 keeps a two-panel figure near 50 kB).

    Returns:
      ``path``.
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.suffix != ".png":
        raise ValueError(f"save_figure: figures are PNG files; got {path}.")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, format="png")
    plt.close(fig)
    return path
