"""The training loop: real steps for every config, bit-exact resume, 1 vs 2 devices, divergence."""

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from ml_collections import config_flags  # noqa: F401  (config files are loaded like the launcher does)

from dks_jax.train import checkpoint as checkpoint_lib
from dks_jax.train import loop

REPO = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(Path(p).name for p in glob.glob(str(REPO / "configs" / "*.py")))


def load_config(name: str, arg: str = "", **overrides):
    """Loads ``configs/name`` the way ``--config=configs/name:arg --config.k=v`` would."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"cfg_{name[:-3]}", REPO / "configs" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    with config.unlocked():
        for key, value in overrides.items():
            if key not in config:
                raise KeyError(key)
            config[key] = value
    return config


def _params_of(workdir, config):
    exp = loop.Experiment(config)
    target = exp.init_state()
    with checkpoint_lib.CheckpointManager(Path(workdir) / "checkpoints") as ckpt:
        step, restored = ckpt.restore_latest(target)
    return step, jax.device_get(restored["params"])


def _assert_trees_equal(a, b):
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_every_config_has_a_tiny_variant_listed():
    assert "default.py" in CONFIG_FILES
    for name in CONFIG_FILES:
        config = load_config(name, "tiny")
        assert config.max_steps and config.max_steps <= 5, name
        assert config.is_locked, name
        for key, value in config.items():
            assert isinstance(value, (str, int, float)), (name, key, type(value))


@pytest.mark.parametrize("optimizer", ["sgd"])  # K-FAC: test_every_config_tiny_variant_trains
def test_default_tiny_trains_real_steps(tmp_path, optimizer):
    config = load_config("default.py", "tiny", optimizer=optimizer)
    summary = loop.train_and_evaluate(config, tmp_path, progress=False)
    assert summary["steps"] == config.max_steps
    for key in ("test_accuracy", "train_loss", "steps", "epochs", "wall_seconds"):
        assert key in summary
    assert np.isfinite(summary["train_loss"])
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["steps"] == summary["steps"]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3]
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((tmp_path / "tensorboard").iterdir())


@pytest.mark.parametrize("optimizer", ["sgd", "kfac"])
def test_resume_is_bit_exact(tmp_path, optimizer):
    """N steps, stop, resume to N+M == N+M uninterrupted (same checkpoints, same parameters)."""
    common = dict(optimizer=optimizer, checkpoint_every_steps=2, log_every_steps=1)
    straight = load_config("default.py", "tiny", max_steps=5, **common)
    loop.train_and_evaluate(straight, tmp_path / "straight", progress=False)
    first = load_config("default.py", "tiny", max_steps=3, **common)
    loop.train_and_evaluate(first, tmp_path / "resumed", progress=False)
    second = load_config("default.py", "tiny", max_steps=5, **common)
    summary = loop.train_and_evaluate(second, tmp_path / "resumed", progress=False)
    assert summary["steps"] == 5
    step_a, params_a = _params_of(tmp_path / "straight", straight)
    step_b, params_b = _params_of(tmp_path / "resumed", second)
    assert step_a == step_b == 5
    _assert_trees_equal(params_a, params_b)
    # The resumed run's log continues, without duplicated steps.
    rows = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5]


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path):
    config = load_config("default.py", "tiny", max_steps=4, checkpoint_every_steps=2, log_every_steps=1)
    loop.train_and_evaluate(config, tmp_path, progress=False)
    # Damage every data file of the newest checkpoint (step 4).
    newest = sorted((tmp_path / "checkpoints").iterdir(), key=lambda p: p.name)
    damaged = 0
    for path in (tmp_path / "checkpoints").rglob("*"):
        if path.is_file() and "4" in path.relative_to(tmp_path / "checkpoints").parts[0] and \
                path.stat().st_size > 64:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
            damaged += 1
    assert damaged, newest
    step, _ = _params_of(tmp_path, config)
    assert step == 2


def test_divergence_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    import re
    good = load_config("default.py", "tiny", max_steps=2, checkpoint_every_steps=1, log_every_steps=1)
    loop.train_and_evaluate(good, tmp_path, progress=False)
    bad = load_config("default.py", "tiny", max_steps=8, checkpoint_every_steps=1, log_every_steps=1,
                      learning_rate=1e30, schedule="constant")
    with pytest.raises(loop.TrainingDivergedError, match="NaN/Inf") as info:
        loop.train_and_evaluate(bad, tmp_path, progress=False)
    diverged_at = int(re.search(r"diverged at step (\d+)", str(info.value)).group(1))
    named = int(re.search(r"last good checkpoint is step (\d+)", str(info.value)).group(1))
    assert 2 <= named < diverged_at
    # The checkpoint the message names is there, restorable and finite; nothing after it was saved.
    step, params = _params_of(tmp_path, good)
    assert step == named
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(params))
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "diverged"


def test_bad_config_values_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="config.optimizer='lbfgs'.*kfac"):
        loop.train_and_evaluate(load_config("default.py", "tiny", optimizer="lbfgs"), tmp_path,
                                progress=False)
    with pytest.raises(ValueError, match="config.schedule"):
        loop.train_and_evaluate(load_config("default.py", "tiny", schedule="linear"), tmp_path,
                                progress=False)


_TINY_RUN_SCRIPT = r"""
import json, os, sys
import jax, numpy as np
sys.path.insert(0, {repo!r})
from tests.test_train import load_config, _params_of
from dks_jax.train import loop
config = load_config("default.py", "tiny", optimizer={optimizer!r}, max_steps=3)
loop.train_and_evaluate(config, {workdir!r}, progress=False)
step, params = _params_of({workdir!r}, config)
np.savez({out!r}.format(process=jax.process_index()),
         *[np.asarray(x) for x in jax.tree_util.tree_leaves(params)])
print(json.dumps(dict(devices=jax.device_count(), processes=jax.process_count(), step=step)))
"""


def _run_script(tmp_path, optimizer, name, env, processes=1, devices=1):
    """Runs the tiny training script in ``processes`` processes; returns each process's parameters."""
    script = _TINY_RUN_SCRIPT.format(repo=str(REPO), optimizer=optimizer, workdir=str(tmp_path / name),
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
@pytest.mark.parametrize("optimizer", ["sgd"])
def test_two_simulated_devices_match_one(tmp_path, optimizer):
    results = {}
    for count in (1, 2):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={count}")
        env.pop("JAX_COORDINATOR_ADDRESS", None)
        results[count], = _run_script(tmp_path, optimizer, f"run{count}", env, devices=count)
    _assert_close(results[1], results[2])


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


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


# Every config file's tiny variant with SGD and K-FAC; the other architectures of configs/mnist.py with SGD
# (K-FAC's compilation of each extra architecture would cost a minute of CI for little new coverage).
TINY_RUNS = [(arg, opt) for arg in ("mnist.py:tiny", "cifar10.py:tiny", "imagenet.py:tiny")
             for opt in ("sgd", "kfac")] + [("mnist.py:arch=convnet,tiny", "sgd"),
                                             ("mnist.py:dataset=fashion_mnist,arch=resnet_bn,tiny", "sgd")]


@pytest.mark.parametrize("config_arg,optimizer", TINY_RUNS)
def test_every_config_tiny_variant_trains(tmp_path, config_arg, optimizer):
    name, _, arg = config_arg.partition(":")
    config = load_config(name, arg, optimizer=optimizer, eval_split="test")
    summary = loop.train_and_evaluate(config, tmp_path, progress=False)
    assert summary["status"] in ("stopped", "completed")
    assert summary["steps"] == config.max_steps
    assert np.isfinite(summary["train_loss"]) and 0.0 <= summary["test_accuracy"] <= 1.0


def test_default_run_reaches_95_percent(tmp_path):
    """The README's main command: the full default config, to completion (about a minute here)."""
    config = load_config("default.py")
    summary = loop.train_and_evaluate(config, tmp_path, progress=False)
    assert summary["status"] == "completed" and summary["epochs"] == pytest.approx(30.0)
    assert summary["test_accuracy"] >= 0.95, summary
