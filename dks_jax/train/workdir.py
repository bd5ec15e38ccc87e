"""A run's directory: one run at a time, the config it was started with, nothing lost.

* ``WorkdirLock``: an exclusive ``flock`` on ``WORKDIR/.lock`` (one file per process of a multi-process
  run) for the run's lifetime. The kernel drops the lock when its holder dies, even by ``kill -9``, so a
  stale lock file is simply taken over; the holder's pid, host, start time and command are written into
  the file so that a refused run can say who holds it. (``flock`` is per host; on network filesystems
  that do not support it, runs are not protected from each other.)
* ``check_config``: the stored ``config.json`` against the new config, before anything is written. Changes
  that alter the trained state are refused; changes that only extend or observe the run (more epochs,
  eval/log cadence, ``max_steps``; ``configlib.Field.resumable``) are allowed and recorded in
  ``config_history.jsonl``.
* ``move_aside``: results of an earlier run that can no longer be continued (its checkpoints are gone)
  are moved into ``previous-<time>/``, never deleted.
* ``write_json``: atomic, strict JSON (non-finite floats become null).
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

from dks_jax import configlib
from dks_jax.train import metrics as metrics_lib

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"
SUMMARY_FILE = "summary.json"
# Results of a run (besides checkpoints) that move together when a run cannot be continued.
RESULT_FILES = ("metrics.jsonl", "metrics_superseded.jsonl", SUMMARY_FILE, "curves.png", "tensorboard",
                HISTORY_FILE)


class WorkdirBusyError(RuntimeError):
    """Another run holds the workdir's lock."""


class ConfigMismatchError(ValueError):
    """The workdir holds a run whose trained state the new config would not match."""


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes strict JSON atomically: a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(metrics_lib.strict_json(obj, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> Any | None:
    """The JSON in ``path``, or None when the file does not exist or does not parse."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class WorkdirLock:
    """An exclusive lock on a workdir for one process of a run (see the module docstring).

    Args:
      workdir: The run's directory (must exist).
      process_index: This process's index in a multi-process run (each process locks its own file).
    """

    def __init__(self, workdir: str | os.PathLike, process_index: int = 0):
        name = ".lock" if process_index == 0 else f".lock.{process_index}"
        self.path = Path(workdir) / name
        self._fd: int | None = None

    def acquire(self) -> None:
        """Takes the lock or raises ``WorkdirBusyError`` naming its holder.

        Raises:
          WorkdirBusyError: A live process holds it.
          OSError: The workdir is not writable.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = read_json(self.path) or {}
            raise WorkdirBusyError(
                f"workdir {self.path.parent} is in use by another run (pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')} since {holder.get('started', '?')}: "
                f"{holder.get('command', '?')}); wait for it to finish or use another --workdir."
            ) from None
        previous = read_json(self.path)
        if previous and previous.get("pid") != os.getpid():
            log.info("Taking over the lock of %s left by pid %s (that run ended without releasing it).",
                     self.path.parent, previous.get("pid"))
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now().isoformat(timespec="seconds"),
                "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        # The file stays: unlinking it would let a process that opened it just before lock an orphaned
        # inode while a newcomer locks a new file.
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "WorkdirLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


def check_config(workdir: str | os.PathLike, config: Any) -> dict[str, tuple[Any, Any]]:
    """Compares ``config`` with the config a workdir's run was started with.

    Returns:
      The allowed changes ``{field: (old, new)}`` (empty for a new workdir or an unchanged config).

    Raises:
      ConfigMismatchError: A change alters the trained state (names the fields and how to start afresh).
    """
    stored = read_json(Path(workdir) / CONFIG_FILE)
    if stored is None:
        return {}
    changes = configlib.changed_fields(stored, config)
    refused = {p: c for p, c in changes.items() if not configlib.is_resumable_change(p)}
    if refused:
        listed = ", ".join(f"{p} {old!r} -> {new!r}" for p, (old, new) in refused.items())
        raise ConfigMismatchError(
            f"workdir {workdir} holds a run with a different config ({listed}); those fields change what "
            "is trained, so it cannot be resumed with them. Start afresh with another --workdir (or delete "
            f"{workdir}); only {', '.join(_resumable_fields())} may change on resume.")
    return changes


def _resumable_fields() -> list[str]:
    return [f.path for f in configlib.schema() if f.resumable]


def record_config(workdir: str | os.PathLike, config: Any, changes: dict[str, tuple[Any, Any]],
                  step: int) -> None:
    """Writes ``config.json`` and appends the allowed changes (if any) to ``config_history.jsonl``."""
    workdir = Path(workdir)
    if changes:
        entry = {"time": time.time(), "step": step,
                 "changes": {p: {"old": old, "new": new} for p, (old, new) in changes.items()}}
        with (workdir / HISTORY_FILE).open("a", encoding="utf-8") as f:
            f.write(metrics_lib.strict_json(entry) + "\n")
        log.warning("Resuming %s at step %d with changed fields: %s (recorded in %s).", workdir, step,
                    ", ".join(f"{p} {old!r} -> {new!r}" for p, (old, new) in changes.items()),
                    workdir / HISTORY_FILE)
    write_json(workdir / CONFIG_FILE, configlib.to_json_dict(config))


def has_results(workdir: str | os.PathLike) -> bool:
    """Whether the workdir holds metrics rows or a summary of an earlier run."""
    workdir = Path(workdir)
    metrics = workdir / "metrics.jsonl"
    return (workdir / SUMMARY_FILE).exists() or (metrics.exists() and metrics.stat().st_size > 0)


def move_aside(workdir: str | os.PathLike, extra: tuple[str, ...] = ()) -> Path:
    """Moves an earlier run's results (and ``extra`` entries) into ``workdir/previous-<time>/``."""
    workdir = Path(workdir)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = workdir / f"previous-{stamp}"
    suffix = 1
    while target.exists():
        suffix += 1
        target = workdir / f"previous-{stamp}-{suffix}"
    target.mkdir()
    for name in RESULT_FILES + extra:
        source = workdir / name
        if source.exists():
            shutil.move(str(source), str(target / name))
    return target
