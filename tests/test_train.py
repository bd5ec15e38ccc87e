"""The training loop: real steps, a workdir that never lies, bit-exact resume, divergence, 1 vs 2 devices."""

import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import REPO, load_config
from dks_jax import configlib
from dks_jax.train import checkpoint as checkpoint_lib
from dks_jax.train import loop
from dks_jax.train import metrics as metrics_lib
from dks_jax.train import workdir as workdir_lib

# The loop's mechanics (resume, checkpoints, divergence) on the cheapest step; K-FAC has its own tests.
TINY = "default.py:tiny,optimizer=sgd"


def _train(workdir, spec=TINY, **fields):
    return loop.train_and_evaluate(load_config(spec, **fields), workdir, progress=False)


def _params_of(workdir, config):
    exp = loop.Experiment(config)
    with checkpoint_lib.CheckpointManager(Path(workdir) / "checkpoints") as ckpt:
        step, restored = ckpt.restore_latest(exp.init_state())
    return step, jax.device_get(restored.params)


def _assert_trees_equal(a, b):
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _strict_json(path):
    def refuse(name):
        raise AssertionError(f"{path} holds {name}, which is not JSON")
    return json.loads(Path(path).read_text(), parse_constant=refuse)


def _rows(workdir, kind=None):
    rows = metrics_lib.read_rows(Path(workdir) / "metrics.jsonl")
    return [r for r in rows if kind is None or r["kind"] == kind]


def _snapshot(workdir):
    """Every file of a workdir but the lock, with its bytes and modification time."""
    return {p.relative_to(workdir): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in Path(workdir).rglob("*") if p.is_file() and p.name != ".lock"}


def test_tiny_run_writes_its_results(tmp_path):
    summary = _train(tmp_path)
    assert summary["steps"] == 3 and summary["status"] == "stopped"
    on_disk = _strict_json(tmp_path / "summary.json")
    assert on_disk["steps"] == 3 and np.isfinite(on_disk["train_loss"])
    assert 0.0 <= on_disk["test_accuracy"] <= 1.0 and on_disk["optimizer"] == "sgd"
    assert [r["step"] for r in _rows(tmp_path, "train")] == [1, 2, 3]
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((tmp_path / "tensorboard").iterdir())
    assert _strict_json(tmp_path / "config.json")["optimizer"]["name"] == "sgd"


def test_rerun_of_a_finished_run_changes_nothing(tmp_path):
    first = _train(tmp_path)
    before = _snapshot(tmp_path)
    again = _train(tmp_path)
    assert again["already_complete"] and again["steps"] == first["steps"] == 3
    assert _snapshot(tmp_path) == before  # same files, same bytes, not even rewritten


def test_summary_is_strict_json_when_values_are_not_finite(tmp_path):
    workdir_lib.write_json(tmp_path / "s.json", {"a": float("nan"), "b": [float("inf"), 1.0]})
    assert _strict_json(tmp_path / "s.json") == {"a": None, "b": [None, 1.0]}


_HOLD_LOCK = r"""
import sys, time
from dks_jax.train import workdir
lock = workdir.WorkdirLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_a_second_run_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(tmp_path)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(workdir_lib.WorkdirBusyError, match=f"in use by another run \\(pid {holder.pid}"):
            _train(tmp_path)
        assert not (tmp_path / "metrics.jsonl").exists()  # the refused run wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: the lock file stays, the kernel drops the lock
        holder.wait()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == holder.pid
    assert _train(tmp_path)["steps"] == 3


def test_resuming_with_a_state_changing_config_is_refused_before_writing(tmp_path):
    _train(tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(workdir_lib.ConfigMismatchError) as info:
        _train(tmp_path, depth=20, **{"optimizer.name": "adam"})
    message = str(info.value)
    assert "depth 16 -> 20" in message and "optimizer.name 'sgd' -> 'adam'" in message
    assert "another --workdir" in message and "\n" not in message
    assert _snapshot(tmp_path) == before


def test_extending_a_run_is_allowed_logged_and_recorded(tmp_path, caplog):
    _train(tmp_path)
    summary = _train(tmp_path, max_steps=5, log_every_steps=2)
    assert summary["steps"] == 5
    history = [json.loads(line) for line in (tmp_path / "config_history.jsonl").read_text().splitlines()]
    assert history[-1]["step"] == 3
    assert history[-1]["changes"] == {"max_steps": {"old": 3, "new": 5},
                                      "log_every_steps": {"old": 1, "new": 2}}
    assert _strict_json(tmp_path / "config.json")["max_steps"] == 5
    assert "changed fields: log_every_steps 1 -> 2, max_steps 3 -> 5" in caplog.text


def test_results_without_checkpoints_are_moved_aside_not_dropped(tmp_path, caplog):
    _train(tmp_path)
    old_rows = (tmp_path / "metrics.jsonl").read_text()
    import shutil
    shutil.rmtree(tmp_path / "checkpoints")
    summary = _train(tmp_path)
    assert summary["steps"] == 3 and not summary.get("already_complete")
    (previous,) = tmp_path.glob("previous-*")
    assert (previous / "metrics.jsonl").read_text() == old_rows
    assert (previous / "summary.json").exists()
    assert f"moved them to {previous}" in caplog.text
    assert [r["step"] for r in _rows(tmp_path, "train")] == [1, 2, 3]


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path, caplog):
    _train(tmp_path, max_steps=2)
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "train", "step": 3, "loss": 1.')  # a crash mid-write
    assert _train(tmp_path, max_steps=4)["steps"] == 4
    assert "torn last line" in caplog.text
    assert [r["step"] for r in _rows(tmp_path, "train")] == [1, 2, 3, 4]


def test_damage_before_the_last_metrics_line_is_refused_naming_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "step": 1}\n{"kind": "tr\n{"kind": "train", "step": 3}\n')
    with pytest.raises(metrics_lib.MetricsFileError, match=f"{path} line 2 is not a valid metrics row"):
        metrics_lib.read_rows(path)


def test_set_up_failure_leaves_no_workdir_behind(tmp_path):
    workdir = tmp_path / "new"
    with pytest.raises(Exception, match="mnist"):
        _train(workdir, "mnist.py:tiny", data_dir=str(tmp_path / "no-data-here"))
    assert not workdir.exists()


def test_finite_loss_blow_up_is_divergence(tmp_path):
    """Adam at a rate that jumps 1000x after 6 steps: the loss explodes to ~1e8 but stays finite."""
    fields = {"optimizer.name": "adam", "learning_rate": 1e-3, "schedule.name": "piecewise_constant",
              "schedule.warmup_epochs": 0.0, "schedule.piecewise_constant.boundaries": (0.3,),
              "schedule.piecewise_constant.factors": (1000.0,), "num_epochs": 0.2, "max_steps": 0,
              "divergence.window_steps": 3, "divergence.loss_factor": 1.5, "checkpoint_every_steps": 1}
    with pytest.raises(loop.TrainingDivergedError, match="the training loss blew up") as info:
        _train(tmp_path, **fields)
    diverged_at = int(re.search(r"diverged at step (\d+)", str(info.value)).group(1))
    good = int(re.search(r"last good checkpoint is step (\d+)", str(info.value)).group(1))
    assert good < diverged_at
    losses = {r["step"]: r["loss"] for r in _rows(tmp_path, "train")}
    assert all(np.isfinite(v) for v in losses.values()) and losses[diverged_at] > 1e3
    assert losses[good] < 3.0  # the checkpoint named is from before the blow-up
    summary = _strict_json(tmp_path / "summary.json")
    assert summary["status"] == "diverged" and summary["last_good_checkpoint"] == good
    with checkpoint_lib.CheckpointManager(tmp_path / "checkpoints") as ckpt:
        assert ckpt.latest_step() == good
    # Rerunning the same config would only diverge again: refused, nothing changes.
    before = _snapshot(tmp_path)
    with pytest.raises(loop.TrainingDivergedError, match="already diverged"):
        _train(tmp_path, **fields)
    assert _snapshot(tmp_path) == before


def test_nan_divergence_keeps_the_last_good_checkpoint(tmp_path):
    _train(tmp_path, max_steps=2, checkpoint_every_steps=1)
    bad = dict(max_steps=8, checkpoint_every_steps=1, learning_rate=1e30,
               **{"schedule.name": "constant", "schedule.warmup_epochs": 0.0})
    # A different learning rate alters the trained state: it belongs in a workdir of its own.
    with pytest.raises(workdir_lib.ConfigMismatchError, match="learning_rate"):
        _train(tmp_path, **bad)
    with pytest.raises(loop.TrainingDivergedError, match="NaN/Inf") as info:
        _train(tmp_path / "bad", **bad)
    diverged_at = int(re.search(r"diverged at step (\d+)", str(info.value)).group(1))
    named = re.search(r"last good checkpoint (is step (\d+)|does not exist)", str(info.value))
    assert named and diverged_at >= 1
    summary = _strict_json(tmp_path / "bad" / "summary.json")
    assert summary["status"] == "diverged"
    if named.group(2):
        step, params = _params_of(tmp_path / "bad", load_config(TINY, **bad))
        assert step == int(named.group(2)) < diverged_at
        assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(params))


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, caplog):
    config = load_config(TINY, max_steps=4, checkpoint_every_steps=2)
    loop.train_and_evaluate(config, tmp_path, progress=False)
    damaged = 0
    for path in (tmp_path / "checkpoints" / "4").rglob("*"):
        if path.is_file() and path.stat().st_size > 64:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
            damaged += 1
    assert damaged
    step, _ = _params_of(tmp_path, config)
    assert step == 2
    # Resuming recomputes steps 3-4 exactly; their old rows are kept aside, not dropped.
    (tmp_path / "summary.json").unlink()
    loop.train_and_evaluate(config, tmp_path, progress=False)
    superseded = metrics_lib.read_rows(tmp_path / "metrics_superseded.jsonl")
    assert {r["step"] for r in superseded} >= {3, 4}
    assert [r["step"] for r in _rows(tmp_path, "train")] == [1, 2, 3, 4]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd", "kfac"])
def test_resume_is_bit_exact(tmp_path, optimizer):
    """N steps, stop, resume to N+M == N+M uninterrupted (same checkpoints, same parameters)."""
    common = {"optimizer.name": optimizer, "checkpoint_every_steps": 2}
    _train(tmp_path / "straight", max_steps=5, **common)
    _train(tmp_path / "resumed", max_steps=3, **common)
    summary = _train(tmp_path / "resumed", max_steps=5, **common)
    assert summary["steps"] == 5
    config = load_config(TINY, max_steps=5, **common)
    step_a, params_a = _params_of(tmp_path / "straight", config)
    step_b, params_b = _params_of(tmp_path / "resumed", config)
    assert step_a == step_b == 5
    _assert_trees_equal(params_a, params_b)
    assert [r["step"] for r in _rows(tmp_path / "resumed", "train")] == [1, 2, 3, 4, 5]


_CLI_STEPS = 12
_TRAIN_CLI = [sys.executable, "-m", "experiments.train", f"--config=configs/{TINY}", "--quiet",
              f"--config.max_steps={_CLI_STEPS}", "--config.checkpoint_every_steps=1"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_interrupted_cli_run_resumes_bit_exact(tmp_path, sig):
    straight = tmp_path / "straight"
    subprocess.run(_TRAIN_CLI + [f"--workdir={straight}"], cwd=REPO, check=True, capture_output=True)
    interrupted = tmp_path / "interrupted"
    # A terminal's Ctrl-C raises KeyboardInterrupt in the run. Where the test itself runs as a background
    # job of a non-interactive shell, SIGINT is ignored and children inherit that (Python then installs no
    # handler and the run finishes with status 0), so the child restores Python's own handler first.
    restore_sigint = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                      "sys.argv = ['experiments.train'] + sys.argv[1:]; "
                      "runpy.run_module('experiments.train', run_name='__main__', alter_sys=True)")
    proc = subprocess.Popen([sys.executable, "-c", restore_sigint] + _TRAIN_CLI[3:]
                            + [f"--workdir={interrupted}"], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 300
    def checkpointed() -> list[int]:  # the 3 newest are kept, so checkpoint 4 alone may come and go unseen
        folder = interrupted / "checkpoints"
        return [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.exists() else []

    while max(checkpointed(), default=0) < 4:  # mid-run: at least 4 steps done
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    assert proc.returncode in (130, -signal.SIGKILL)
    with checkpoint_lib.CheckpointManager(interrupted / "checkpoints") as ckpt:
        assert ckpt.latest_step() < _CLI_STEPS
    done = subprocess.run(_TRAIN_CLI + [f"--workdir={interrupted}"], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    config = load_config(TINY, max_steps=_CLI_STEPS)
    _assert_trees_equal(_params_of(straight, config)[1], _params_of(interrupted, config)[1])
    steps = [r["step"] for r in _rows(interrupted, "train")]
    assert steps == list(range(1, _CLI_STEPS + 1))


_TINY_RUN_SCRIPT = r"""
import json, os, sys
import jax, numpy as np
sys.path[:0] = [{repo!r}, {tests!r}]
from conftest import load_config
from tests.test_train import _params_of
from dks_jax.train import loop
config = load_config("default.py:tiny", **{{"optimizer.name": {optimizer!r}}})
loop.train_and_evaluate(config, {workdir!r}, progress=False)
step, params = _params_of({workdir!r}, config)
np.savez({out!r}.format(process=jax.process_index()),
         *[np.asarray(x) for x in jax.tree_util.tree_leaves(params)])
print(json.dumps(dict(devices=jax.device_count(), processes=jax.process_count(), step=step)))
"""


def _run_script(tmp_path, optimizer, name, env, processes=1, devices=1):
    """Runs the tiny training script in ``processes`` processes; returns each process's parameters."""
    script = _TINY_RUN_SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests"), optimizer=optimizer,
                                       workdir=str(tmp_path / name),
                                       out=str(tmp_path / f"{name}_p{{process}}.npz"))
    procs = []
    for index in range(processes):
        proc_env = dict(env)
        if processes > 1:
            proc_env.update(JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(index))
        procs.append(subprocess.Popen([sys.executable, "-c", script], env=proc_env, cwd=REPO, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    assert outs == [{"devices": devices, "processes": processes, "step": 3}] * processes
    return [np.load(tmp_path / f"{name}_p{index}.npz") for index in range(processes)]


def _assert_close(a, b):
    assert a.files == b.files
    for key in a.files:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6)


# K-FAC's data-parallel step is the same jit_step path; tests/test_optim_parallel.py checks it on 2 devices.
@pytest.mark.slow
def test_two_simulated_devices_match_one(tmp_path):
    results = {}
    for count in (1, 2):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={count}")
        env.pop("JAX_COORDINATOR_ADDRESS", None)
        results[count], = _run_script(tmp_path, "sgd", f"run{count}", env, devices=count)
    _assert_close(results[1], results[2])


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd", "kfac"])
def test_two_processes_match_one(tmp_path, optimizer):
    # A real multi-process run on one machine: jax.distributed over localhost (gloo collectives on CPU),
    # each process reading its own half of every batch and writing the one shared checkpoint directory.
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    single, = _run_script(tmp_path, optimizer, "single", env)
    env["JAX_COORDINATOR_ADDRESS"] = f"localhost:{_free_port()}"
    for params in _run_script(tmp_path, optimizer, "multi", env, processes=2, devices=2):
        _assert_close(single, params)


# Every config file's tiny variant with SGD and K-FAC; the other architectures of configs/mnist.py with SGD.
TINY_RUNS = [(arg, opt) for arg in ("mnist.py:tiny", "cifar10.py:tiny", "imagenet.py:tiny")
             for opt in ("sgd", "kfac")] + [("mnist.py:arch=convnet,tiny", "sgd"),
                                             ("mnist.py:dataset=fashion_mnist,arch=resnet_bn,tiny", "sgd")]


@pytest.mark.slow
@pytest.mark.parametrize("config_arg,optimizer", TINY_RUNS)
def test_every_config_tiny_variant_trains(tmp_path, config_arg, optimizer):
    config = load_config(config_arg, **{"optimizer.name": optimizer})
    summary = loop.train_and_evaluate(config, tmp_path, progress=False)
    assert summary["status"] in ("stopped", "completed")
    assert summary["steps"] == config.max_steps
    assert np.isfinite(summary["train_loss"]) and 0.0 <= summary["test_accuracy"] <= 1.0


@pytest.mark.slow
def test_default_run_reaches_98_percent(tmp_path):
    """The README's main command: the full default config (K-FAC), to completion (about 45 s here)."""
    summary = _train(tmp_path, "default.py")
    assert summary["status"] == "completed" and summary["epochs"] == pytest.approx(60.0)
    # 98.61 / 98.33 / 98.61% for seeds 0 / 1 / 2 when the defaults were chosen (5 / 6 / 5 errors of 359).
    assert summary["test_accuracy"] >= 0.98, summary


def _default_config_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("default_config", REPO / "configs" / "default.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("optimizer", ["kfac", "sgd"])
def test_default_settings_are_a_point_of_their_sweep_grid(optimizer):
    module = _default_config_module()
    arg = "" if optimizer == "kfac" else f"optimizer={optimizer}"
    config, axes = module.get_config(arg), module.get_sweep(arg)
    assert config.optimizer.name == optimizer
    # The last stage repeats over seeds or over validation folds (cross-validation).
    assert axes.get("seed") == [0, 1] or axes.get("validation_fold") == [0, 1, 2, 3, 4]
    value_of = lambda c, field: functools.reduce(lambda v, part: v[part], field.split("."), c)
    for field, values in axes.items():
        if field not in ("seed", "validation_fold"):
            assert value_of(config, field) in values, field
    # Each earlier stage's fixed fields (single values) are what the stages before it chose.
    stages = module.STAGES[optimizer]
    for n in range(1, len(stages)):
        assert module.get_sweep(f"{arg},stage={n}".lstrip(",")) == stages[n - 1]
    if optimizer == "kfac":
        assert stages[1]["learning_rate"] == [0.003] and stages[1]["label_smoothing"] == [0.1]  # stage 1's
        assert stages[2]["tat.c_val_0_target"] == [0.8]  # stage 2's
    with pytest.raises(configlib.ConfigError, match="optimizer='adagrad' must be one of kfac, sgd"):
        module.get_config("optimizer=adagrad")
    with pytest.raises(configlib.ConfigError, match=f"stage=9 must be 1..{len(stages)}"):
        module.get_sweep(f"stage=9,{arg}".rstrip(","))


def test_validation_fold_selects_a_disjoint_held_out_slice():
    from dks_jax.train import tasks  # pylint: disable=g-import-not-at-top

    config = load_config("default.py:tiny,optimizer=sgd")
    config.validation_fraction = 0.2
    key = lambda ds: {r.tobytes() for r in ds.images}
    folds = []
    for fold in range(5):
        config.validation_fold = fold
        splits = tasks.load_datasets(config)
        assert (len(splits["train"]), len(splits["validation"]), len(splits["test"])) == (1150, 288, 359)
        folds.append(key(splits["validation"]))
    assert len(set().union(*folds)) >= 1430  # 5 slices of 288 cover (nearly) all 1,438 (duplicate images aside)
    config.validation_fold = 5
    with pytest.raises(configlib.ConfigError, match=r"config.validation_fold=5 with config.validation_fraction=0.2: .*folds 0..4"):
        tasks.load_datasets(config)
    config.validation_fraction, config.validation_fold = 0.0, 1
    with pytest.raises(configlib.ConfigError, match="config.validation_fold=1 needs .*validation_fraction"):
        tasks.load_datasets(config)
