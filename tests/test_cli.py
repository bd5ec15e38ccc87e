"""The command line: fields and names you can list, and one clear line (exit 2) for every user error."""

import errno
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import REPO
from dks_jax import configlib
from experiments import cli
from experiments import train as train_cli


def _run_main(monkeypatch, capsys, *argv):
    """Runs ``python -m experiments.train ARGV`` in this process; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["experiments.train", *argv])
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as info:
        cli.main_wrapper(train_cli.main, "experiments.train")
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_help_lists_every_config_field_with_what_it_accepts(monkeypatch, capsys):
    code, out, _ = _run_main(monkeypatch, capsys, "--help")
    assert code == 0
    for field in configlib.SCHEMA:
        assert f"| {field.path} |" in out
    assert "--workdir" in out and "--describe" in out and "--list" in out


def test_describe_shows_the_configs_values(monkeypatch, capsys):
    code, out, _ = _run_main(monkeypatch, capsys, "--config=configs/mnist.py:optimizer=kfac", "--describe",
                             "--config.learning_rate=0.02")
    assert code == 0
    assert "| optimizer.name | 'kfac' |" in out and "| learning_rate | 0.02 |" in out
    assert "| optimizer.kfac.damping | 0.3 |" in out and "must be a number > 0" in out


def test_list_names_everything_a_config_can_use(monkeypatch, capsys):
    code, out, _ = _run_main(monkeypatch, capsys, "--list")
    assert code == 0
    sections = [line[:-1] for line in out.splitlines() if line and not line.startswith(" ")]
    assert sections == list(cli.LISTABLE)
    for name in ("configs/mnist.py", "vanilla_resnet", "fashion_mnist", "leaky_relu", "TAT", "kfac",
                 "cosine"):
        assert f"  {name}" in out, name
    code, out, _ = _run_main(monkeypatch, capsys, "--list=models")
    assert out.splitlines()[0] == "models:" and "datasets:" not in out


@pytest.mark.parametrize("argv,message", [
    (["--config.dataset=mnsit"], "config.dataset='mnsit' must be one of .*'fashion_mnist'.* \\(did you mean "
                                 "'mnist'\\?\\)"),
    (["--config.learnin_rate=0.1"], "--config.learnin_rate: no such config field; did you mean "
                                    "learning_rate\\?"),
    (["--config=configs/nope.py"], "config file 'configs/nope.py' does not exist; configs in configs/: "
                                   "cifar10.py, default.py"),
    (["--config=configs/mnist.py:arhc=mlp"], "unknown config option 'arhc' \\(did you mean 'arch'\\?\\)"),
    (["--config=configs/mnist.py:depth=deep"], "config option depth='deep' must be an integer"),
    (["--config.learning_rate=-0.1"], "config.learning_rate=-0.1 must be a number > 0"),
    (["--config.learning_rate=0"], "config.learning_rate=0.0 must be a number > 0"),
    (["--config.optimizer.sgd.nesterov=1.5"], "must be a boolean"),
    (["--workdr=/tmp/x"], "unknown flag --workdr \\(did you mean --workdir\\?\\)"),
    (["--list=nothing"], "--list='nothing': choose one of configs"),
])
def test_user_errors_are_one_line_with_exit_code_2(monkeypatch, capsys, argv, message):
    code, out, err = _run_main(monkeypatch, capsys, *argv, "--workdir=/nonexistent/never-created")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("experiments.train: error: ")
    import re
    assert re.search(message, err), err


def test_failed_set_up_leaves_no_workdir_and_one_line(monkeypatch, capsys, tmp_path):
    workdir = tmp_path / "run"
    code, _, err = _run_main(monkeypatch, capsys, "--config=configs/mnist.py:tiny", f"--workdir={workdir}",
                             f"--config.data_dir={tmp_path / 'empty'}")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "mnist" in err
    assert not workdir.exists()


def test_read_only_workdir_is_one_line(monkeypatch, capsys, tmp_path):
    """A workdir that cannot be created (as on a read-only filesystem; the real one is tested below)."""
    import pathlib
    real_mkdir = pathlib.Path.mkdir

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
    code, _, err = _run_main(monkeypatch, capsys, "--config=configs/default.py:tiny",
                             f"--workdir={tmp_path / 'ro' / 'run'}")
    assert code == 2 and err.strip().splitlines() == [
        f"experiments.train: error: cannot write {tmp_path / 'ro' / 'run'}: Read-only file system; choose "
        "a writable --workdir."]


def test_disk_errors_behind_library_exceptions_are_recognized():
    full = ValueError("RESOURCE_EXHAUSTED: Error writing ...: No space left on device [os_error_code='28']")
    assert cli.disk_error(full).errno == errno.ENOSPC
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = PermissionError(errno.EACCES, "Permission denied", "/x/summary.json")
    assert cli.one_line(cli.disk_error(wrapped)) == ("cannot write /x/summary.json: Permission denied; "
                                                     "choose a writable --workdir.")
    assert cli.disk_error(ValueError("something else")) is None


_WITH_FAKE_FULL_DISK = r"""
import collections, shutil, sys
# The disk reports (almost) no free space, as a full one does.
usage = collections.namedtuple("usage", "total used free")
shutil.disk_usage = lambda path: usage(10**9, 10**9 - 4096, 4096)
sys.argv = ["experiments.train"] + sys.argv[1:]
from experiments import cli, train
cli.main_wrapper(train.main, "experiments.train")
"""


@pytest.mark.slow
def test_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _WITH_FAKE_FULL_DISK, "--config=configs/default.py:tiny",
                           f"--workdir={tmp_path / 'w'}", "--quiet"], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"experiments.train: error: the disk is full while writing {tmp_path / 'w' / 'checkpoints'}. Free "
        "space and rerun: the run resumes from its last good checkpoint."]


def _mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["read-only", "full"])
def test_real_read_only_and_full_filesystems(tmp_path, kind):
    """The same on real filesystems (tmpfs mounts; skipped where this machine does not allow mounting)."""
    mount = Path("/tmp") / f"dks_jax_test_{uuid.uuid4().hex[:8]}"
    options = "ro,size=1m" if kind == "read-only" else "size=160k"
    if not _mount_tmpfs(mount, options):
        pytest.skip("mounting a tmpfs is not permitted here (needs root); covered by the fake-disk test")
    try:
        proc = subprocess.run([sys.executable, "-m", "experiments.train", "--config=configs/default.py:tiny",
                               f"--workdir={mount / 'w'}", "--quiet"], cwd=REPO, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        expected = "Read-only file system" if kind == "read-only" else "the disk is full"
        assert expected in lines[0]
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        mount.rmdir()
