"""The one flag library of the command-line entry points (train, sweep, diagnose, solve, summary, ...).

Every entry point that takes an experiment config reads it the same way::

  --config=configs/mnist.py[:arg]      the config file and its argument (see the file's docstring)
  --config.<field>=<value>             any field, dotted for sections (--config.optimizer.kfac.damping=1)
  --describe                           print every field of the config with its value, meaning and range
  --list[=WHAT]                        list configs, models, datasets, activations, methods, optimizers,
                                       schedules (all of them by default)

and reports a bad command line, a bad config, or a run that cannot proceed (busy or mismatched workdir,
divergence, a read-only workdir, a full disk, missing data) as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from dks_jax import configlib

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"
LISTABLE = ("configs", "models", "datasets", "activations", "methods", "optimizers", "schedules")
EXIT_USAGE = 2


class UsageError(ValueError):
    """A command-line mistake (unknown flag, missing value)."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as a ``UsageError`` (one line) instead of exiting."""

    def error(self, message: str):
        raise UsageError(f"{message}; see --help.")


def parser(prog: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
    """An argparse parser for an entry point without a config (-h/--help handled by the caller)."""
    result = _Parser(prog=prog, description=description, epilog=epilog, add_help=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    result.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    return result


def config_parser(prog: str, description: str, *, default_config: str | None = "configs/default.py",
                  epilog: str = "") -> argparse.ArgumentParser:
    """A parser with the shared config flags (the entry point adds its own)."""
    result = parser(prog, description, epilog)
    result.add_argument("--config", default=default_config,
                        help="config file[:arg]; override fields with --config.<field>=<value>"
                             + ("" if default_config else " (required)"))
    result.add_argument("--describe", action="store_true",
                        help="print every config field (value, meaning, accepted values) and exit")
    result.add_argument("--list", nargs="?", const="all", default=None, metavar="WHAT",
                        help=f"list what can be named ({', '.join(LISTABLE)}; default: all) and exit")
    return result


def split_overrides(argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Separates ``--config.<path>=<value>`` (or ``--config.<path> <value>``) from the other arguments."""
    rest, overrides = [], {}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--config."):
            path, sep, value = arg[len("--config."):].partition("=")
            if not sep:
                if i + 1 >= len(args):
                    raise UsageError(f"{arg} needs a value ({arg}=...).")
                i += 1
                value = args[i]
            overrides[path] = value
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def parse(flags: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[argparse.Namespace, dict]:
    """Parses the flags; unknown flags raise ``UsageError`` with the closest valid one."""
    rest, overrides = split_overrides(argv)
    namespace, unknown = flags.parse_known_args(rest)
    if unknown:
        flag = unknown[0].split("=", 1)[0]
        known = [s for action in flags._actions for s in action.option_strings]  # pylint: disable=protected-access
        close = difflib.get_close_matches(flag, known, n=1)
        raise UsageError(f"unknown flag {flag}" + (f" (did you mean {close[0]}?)" if close else "")
                         + "; see --help.")
    return namespace, overrides


def parse_without_config(flags: argparse.ArgumentParser, argv: Sequence[str]
                         ) -> argparse.Namespace | None:
    """``parse`` for entry points without a config: refuses ``--config.*`` fields and prints the help
    for ``-h``/``--help`` (then returns None: the caller exits 0)."""
    args, overrides = parse(flags, argv)
    if overrides:
        raise UsageError("this command takes no --config fields; see --help.")
    if args.help:
        print(flags.format_help())
        return None
    return args


def load(spec: str | None, overrides: dict[str, str]) -> Any:
    """The config of ``--config=spec`` with the command line's overrides applied and validated."""
    if not spec:
        raise UsageError("--config is required, e.g. --config=configs/default.py.")
    config = configlib.load_config_file(spec, validate_fields=False)
    return configlib.apply_overrides(config, overrides)


def help_text(flags: argparse.ArgumentParser) -> str:
    """argparse's help plus every config field with its default (``--describe`` shows a config's values)."""
    base = configlib.base_config()
    return (flags.format_help() + "\nConfig fields (defaults; --config=FILE --describe shows a config's "
            "values):\n\n" + configlib.describe(base) + "\n")


def catalog(what: str = "all") -> str:
    """The names a config can use, by kind (``--list``)."""
    kinds = LISTABLE if what == "all" else (what,)
    if any(k not in LISTABLE for k in kinds):
        raise UsageError(f"--list={what!r}: choose one of {', '.join(LISTABLE)} (or nothing for all).")
    lines = []
    for kind in kinds:
        lines.append(f"{kind}:")
        for name, note in _names(kind):
            lines.append(f"  {name:<24} {note}".rstrip())
    return "\n".join(lines)


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def _names(kind: str) -> list[tuple[str, str]]:
    if kind == "configs":
        import ast
        out = []
        for name in configlib.config_files(CONFIG_DIR):
            doc = ast.get_docstring(ast.parse((CONFIG_DIR / name).read_text(encoding="utf-8")))
            out.append((f"configs/{name}", _first_line(doc)))
        return out
    if kind == "models":
        from dks_jax import nets
        return [(n, "") for n in nets.list_models()]
    if kind == "datasets":
        from dks_jax import data
        return [(n, "") for n in data.list_datasets()]
    if kind == "activations":
        from dks_jax import activations
        return [(n, "") for n in activations.list_activations()]
    if kind == "methods":
        from dks_jax import transforms
        return [(n, "") for n in transforms.METHODS]
    if kind == "optimizers":
        from dks_jax.optim import optimizers
        return [(n, f"options: config.optimizer.{n}") for n in optimizers.list_optimizers()]
    from dks_jax.optim import schedules
    return [(n, "") for n in schedules.list_schedules()]


def handle_info_flags(flags: argparse.ArgumentParser, args: argparse.Namespace,
                      overrides: dict[str, str]) -> bool:
    """Prints --help / --list / --describe when asked; returns whether one was."""
    if args.help:
        print(help_text(flags))
        return True
    if args.list is not None:
        print(catalog(args.list))
        return True
    if args.describe:
        print(configlib.describe(load(args.config, overrides)))
        return True
    return False


def one_line(err: BaseException) -> str:
    """The error as the one line the user sees."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" while writing {err.filename}" if err.filename else ""
        return (f"the disk is full{where}. Free space and rerun: the run resumes from its last good "
                "checkpoint.")
    if isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        where = err.filename or "the workdir"
        return f"cannot write {where}: {err.strerror}; choose a writable --workdir."
    text = str(err).strip().replace("\n", " ")
    if isinstance(err, KeyError) and text.startswith(("'", '"')):
        text = text[1:-1]
    return text or type(err).__name__


def expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix (shown as one line); anything else is a bug (traceback)."""
    from dks_jax.data import errors as data_errors
    from dks_jax.train import loop, metrics, workdir
    return (configlib.ConfigError, UsageError, workdir.WorkdirBusyError, workdir.ConfigMismatchError,
            loop.TrainingDivergedError, metrics.MetricsFileError, data_errors.DatasetNotFoundError,
            data_errors.MalformedDatasetError, FileNotFoundError, ValueError)


def disk_error(err: BaseException) -> OSError | None:
    """The OSError (disk full, read-only, permission) behind ``err``, if any.

    orbax (through tensorstore) reports a full disk as ``ValueError("RESOURCE_EXHAUSTED: ... No space
    left on device [os_error_code='28']")``; that is recognized too.
    """
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES,
                                                       errno.EROFS, errno.EPERM):
            return err
        if "No space left on device" in str(err):
            return OSError(errno.ENOSPC, "No space left on device")
        err = err.__cause__ or err.__context__
    return None


def enable_compilation_cache() -> None:
    """Turns on JAX's persistent compilation cache (unless something already chose a cache folder).

    Reruns, resumed runs and sweep points compile the same programs again; with the cache they load
    them instead (seconds to minutes saved per run on a CPU). ``DKS_JAX_XLA_CACHE`` names the folder
    (default ``~/.cache/dks_jax/xla``); ``DKS_JAX_XLA_CACHE=off`` disables it.
    """
    from dks_jax.train import compilation_cache  # pylint: disable=g-import-not-at-top
    compilation_cache.enable()


def main_wrapper(main: Callable[[Sequence[str]], int | None], prog: str) -> None:
    """Runs ``main(argv)``, turning the user's errors into one line on stderr and exit code 2."""
    enable_compilation_cache()
    try:
        code = main(sys.argv[1:])
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; rerun the same command to resume.", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except BaseException as err:  # pylint: disable=broad-except
        if isinstance(err, SystemExit):
            raise
        disk = disk_error(err)
        if disk is None:
            # The common ones first: the others need the training stack imported (~1.5 s of a solve).
            expected = (configlib.ConfigError, UsageError, FileNotFoundError, ValueError)
            if not isinstance(err, expected):
                try:
                    expected = expected_errors()
                except ImportError:
                    pass
            if not isinstance(err, expected):
                raise
            message = one_line(err)
        else:
            message = one_line(disk)
        print(f"{prog}: error: {message}", file=sys.stderr)
        if disk is not None and disk.errno in (errno.ENOSPC, errno.EDQUOT):
            # Background writers (TensorBoard's flush at exit, orbax's threads) would only repeat a full
            # disk as tracebacks; the run's files are closed and its checkpoints are final.
            sys.stderr.flush()
            sys.stdout.flush()
            os._exit(EXIT_USAGE)  # pylint: disable=protected-access
        sys.exit(EXIT_USAGE)
    sys.exit(code or 0)


def default_workdir(spec: str) -> str:
    """``runs/<config name>[-<arg>]`` for ``--config=spec``."""
    path, _, variant = spec.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("runs", name + (f"-{variant}" if variant else ""))
