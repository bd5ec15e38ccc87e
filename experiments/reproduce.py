r"""Regenerate result tables (markdown + PNG figures) from real computation.

Usage::

  python -m experiments.reproduce --list
  python -m experiments.reproduce --table=tat_depth --workdir=/tmp/results [--quick]
  python -m experiments.reproduce --table=all_theory --workdir=docs/figures --write_index=docs/results.md
  python -m experiments.reproduce --workdir=docs/figures --write_index=docs/results.md   # index only

``--table`` takes a table name, ``all_<group>`` (every table of a group, e.g. ``all_theory``), ``all``,
or a comma-separated list of those. Each table ``NAME`` writes ``WORKDIR/NAME.md`` (a header with the
exact command, the machine, the date and the wall time, then the body), its figures
``WORKDIR/NAME_*.png`` and, when it returns data, ``WORKDIR/NAME.json``.

``--write_index=PATH`` writes one markdown file gathering every registered table whose ``NAME.md`` exists
in ``WORKDIR`` (the ones just run and any generated earlier, e.g. training tables run on another
machine), with headings shifted one level down and figure links made relative to ``PATH``. The
committed ``docs/results.md`` is produced by the third command above.

Tables are registered with ``experiments.tables.register_table`` in modules of the ``experiments``
package whose names end in ``_tables``; this command imports all of them (see ``experiments/tables.py``
for the function signature and an example).
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Sequence

from experiments import tables

MODULE_SUFFIX = "_tables"
_FAILED_IMPORTS: dict[str, str] = {}


def discover_table_modules() -> list[str]:
    """Imports every ``experiments.*_tables`` module (registering its tables); returns their names.

    A module that fails to import is reported on stderr and skipped, so one broken module does not take
    the others down; its error is repeated when one of its tables is asked for (as an unknown name).
    """
    import experiments

    names = sorted(m.name for m in pkgutil.iter_modules(experiments.__path__)
                   if m.name.endswith(MODULE_SUFFIX))
    loaded = []
    for name in names:
        full = f"experiments.{name}"
        try:
            importlib.import_module(full)
            loaded.append(full)
        except Exception as err:  # pylint: disable=broad-except
            _FAILED_IMPORTS[full] = f"{type(err).__name__}: {err}"
            print(f"warning: could not import {full} ({_FAILED_IMPORTS[full]}); its tables are "
                  "unavailable.", file=sys.stderr)
    return loaded


def run_table(spec: tables.TableSpec, workdir: Path, quick: bool, command: str) -> Path:
    """Runs one table and writes ``NAME.md`` (header + body), checks its figures, writes ``NAME.json``.

    Returns:
      The path of the markdown file.

    Raises:
      RuntimeError: If the function's figures are missing, misnamed or not PNG files.
    """
    started = tables.now()
    start = time.perf_counter()
    result = spec.fn(workdir, quick)
    wall = time.perf_counter() - start
    if not isinstance(result, tables.TableResult):
        raise RuntimeError(f"table {spec.name!r} returned {type(result).__name__}, not TableResult.")
    produced = set()
    for fig in result.figures:
        fig = Path(fig)
        if fig.resolve().parent != workdir.resolve() or not fig.name.startswith(spec.name + "_") \
                or fig.suffix != ".png":
            raise RuntimeError(f"table {spec.name!r}: figure {fig} must be {workdir}/{spec.name}_*.png.")
        if not fig.is_file() or not _is_png(fig):
            raise RuntimeError(f"table {spec.name!r}: figure {fig} is missing or not a PNG file.")
        produced.add(fig.name)
    _remove_stale_figures(spec.name, workdir, produced)
    md_path = workdir / f"{spec.name}.md"
    text = tables.header(f"{spec.title} (`{spec.name}`)", command, wall, quick, started)
    md_path.write_text(text + "\n" + result.markdown.strip() + "\n", encoding="utf-8")
    json_path = workdir / f"{spec.name}.json"
    if result.data is not None:
        json_path.write_text(json.dumps(result.data, indent=1, sort_keys=True, default=_json_default)
                             + "\n", encoding="utf-8")
    elif json_path.exists():
        json_path.unlink()
    return md_path


def _json_default(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _is_png(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 8


def _remove_stale_figures(name: str, workdir: Path, produced: set[str]) -> None:
    """Deletes ``NAME_*.png`` files left by earlier runs that this run did not produce.

    Files of another registered table whose name extends this one (``NAME_more``) are kept.
    """
    longer = [s.name + "_" for s in tables.list_tables() if s.name.startswith(name + "_")]
    for path in workdir.glob(f"{name}_*.png"):
        if path.name not in produced and not any(path.name.startswith(p) for p in longer):
            path.unlink()


def write_index(index_path: Path, workdir: Path, command: str, wall_seconds: float,
                started) -> list[str]:
    """Writes the index gathering every registered table whose markdown exists in ``workdir``.

    Returns:
      The names of the tables included.
    """
    index_path.parent.mkdir(parents=True, exist_ok=True)
    rel = Path(os.path.relpath(workdir.resolve(), index_path.parent.resolve()))
    included, missing, sections = [], [], []
    for spec in tables.list_tables():
        md = workdir / f"{spec.name}.md"
        if not md.is_file():
            missing.append(spec)
            continue
        included.append(spec.name)
        sections.append(_relink(_demote_headings(md.read_text(encoding="utf-8")), rel))
    lines = [tables.header("dks_jax: reproduced results", command, wall_seconds, None, started)]
    lines.append("Every table and figure below was generated by `experiments/reproduce.py` from real "
                 "computation; each section's own header gives the command, machine and date that "
                 f"produced it. Per-table files (markdown, PNG, JSON) are in `{rel.as_posix()}/`.\n")
    lines.append("Contents:\n")
    for spec in tables.list_tables():
        if spec.name in included:
            lines.append(f"- [{spec.title}](#{_anchor(spec.title + ' (' + spec.name + ')')}) "
                         f"(`{spec.name}`, group `{spec.group}`)")
        else:
            lines.append(f"- `{spec.name}` ({spec.title}, group `{spec.group}`): not generated yet; run "
                         f"`python -m experiments.reproduce --table={spec.name} "
                         f"--workdir={workdir.as_posix()}` and rebuild this index.")
    body = "\n".join(lines) + "\n\n" + "\n\n---\n\n".join(s.strip() for s in sections) + "\n"
    index_path.write_text(body, encoding="utf-8")
    return included


def _demote_headings(text: str) -> str:
    return re.sub(r"^(#{1,5}) ", r"#\1 ", text, flags=re.MULTILINE)


def _relink(text: str, rel: Path) -> str:
    """Makes relative links (images, files) relative to the index instead of the table's folder."""
    def fix(match: re.Match) -> str:
        target = match.group(2)
        if re.match(r"^([a-z]+:|/|#)", target):
            return match.group(0)
        return f"{match.group(1)}({(rel / target).as_posix()})"

    return re.sub(r"(\]\s*)\(([^)\s]+)\)", fix, text)


def _anchor(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    slug = re.sub(r"[^\w\- ]", "", title.lower())
    return slug.replace(" ", "-")


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (0 ok, 1 a table failed); bad arguments raise
    ``cli.UsageError`` (one line and exit status 2 from the command)."""
    from experiments import cli  # pylint: disable=g-import-not-at-top
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = cli.parser("python -m experiments.reproduce", __doc__.split("\n")[0], epilog=__doc__)
    parser.add_argument("--table", default=None,
                        help="table name, all_<group>, all, or a comma-separated list (see --list)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder for NAME.md, NAME_*.png and NAME.json (created if needed)")
    parser.add_argument("--quick", action="store_true", help="reduced grids (tests, smoke runs)")
    parser.add_argument("--list", action="store_true", help="list the registered tables and exit")
    parser.add_argument("--write_index", type=Path, default=None,
                        help="also write one markdown file gathering every table found in --workdir")
    args = cli.parse_without_config(parser, argv)
    if args is None:
        return 0

    discover_table_modules()
    if args.list:
        for spec in tables.list_tables():
            print(f"{spec.name:24s} {spec.group:10s} {spec.title}")
        print("groups: " + ", ".join(f"all_{g}" for g in tables.groups()) + ", all")
        return 0
    if args.table is None and args.write_index is None:
        raise cli.UsageError("give --table=NAME (see --list) and/or --write_index=PATH.")
    if args.workdir is None:
        raise cli.UsageError("--workdir is required.")
    try:
        specs = tables.resolve(args.table.split(",")) if args.table else []
    except tables.UnknownTableError as err:
        extra = "".join(f" (module {m} failed to import: {e})" for m, e in _FAILED_IMPORTS.items())
        raise cli.UsageError(f"{err}{extra}") from None

    command = tables.command_line(argv)
    tables.code_version()  # cached now, so every header reports the code this run started with
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = tables.now()
    start = time.perf_counter()
    failures = []
    for spec in specs:
        t0 = time.perf_counter()
        try:
            path = run_table(spec, args.workdir, args.quick, command)
        except Exception:  # pylint: disable=broad-except
            failures.append(spec.name)
            print(f"error: table {spec.name!r} failed:\n{traceback.format_exc()}", file=sys.stderr)
            continue
        print(f"{spec.name}: wrote {path} in {time.perf_counter() - t0:.1f} s")
    if args.write_index is not None:
        included = write_index(args.write_index, args.workdir, command, time.perf_counter() - start,
                               started)
        print(f"index: wrote {args.write_index} ({len(included)} tables: {', '.join(included)})")
    if failures:
        print(f"error: failed tables: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from experiments import cli
    cli.main_wrapper(main, "experiments.reproduce")
