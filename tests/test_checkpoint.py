"""Checkpoints: bit-exact round trips (SGD, K-FAC states), corruption fallback, keep-last-k."""

import json
import logging
import os

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dks_jax import optim
from dks_jax.train import checkpoint


def _assert_identical(restored, expected):
    """Same treedef, leaf types, dtypes and bits."""
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(expected)
    for got, want in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(expected)):
        assert type(got) is type(want) or (isinstance(got, jax.Array)
                                           and isinstance(want, jax.Array))
        got_np, want_np = np.asarray(got), np.asarray(want)
        assert got_np.dtype == want_np.dtype and got_np.shape == want_np.shape
        assert got_np.tobytes() == want_np.tobytes()


@pytest.fixture(scope="module")
def train_states():
    """(SGD train state, K-FAC train state) after a few steps of a BatchNorm MLP."""
    model = hk.transform_with_state(lambda x: hk.Linear(3)(jax.nn.relu(
        hk.BatchNorm(True, True, 0.9)(hk.Linear(8, with_bias=False)(x), True))))
    rs = np.random.RandomState(0)
    batch = {"x": rs.randn(16, 4).astype(np.float32), "y": rs.randint(0, 3, 16).astype(np.int32)}

    def loss_fn(params, state, rng, batch):
        logits, new_state = model.apply(params, state, rng, batch["x"])
        loss = optim.classification_loss(logits, batch["y"], label_smoothing=0.1, num_classes=3,
                                         register_for_kfac=True)
        return loss, (new_state, {})

    states = []
    for name, kwargs in (("sgd", {}), ("kfac", {"num_burnin_steps": 0,
                                                  "inverse_update_period": 2})):
        rng = jax.random.PRNGKey(0)
        params, state = jax.jit(model.init)(rng, batch["x"])
        opt = optim.make_optimizer(name, loss_fn, 0.05, l2_reg=1e-4, **kwargs)
        train_state = optim.TrainState.create(params, state, opt.init(params, state, rng, batch))
        step = opt.jit_step()
        for t in range(3):
            train_state, _ = step(train_state, rng, batch)
        params, opt_state, state = train_state.params, train_state.opt_state, train_state.state
        states.append({"params": params, "opt_state": opt_state, "func_state": state,
                       "rng": jax.random.PRNGKey(t), "step": np.int64(3),
                       "bf16": jnp.arange(5, dtype=jnp.bfloat16) / 3, "host": np.eye(2)})
    return states


def _fresh_like(tree):
    """A target with the same structure/dtypes/shardings but different values."""
    def zero(x):
        if isinstance(x, jax.Array):
            return jnp.zeros_like(x)
        return type(x)(0) if isinstance(x, np.generic) else np.zeros_like(x)

    return jax.tree_util.tree_map(zero, tree)


@pytest.mark.parametrize("index", [0, 1], ids=["sgd", "kfac"])
def test_round_trip_is_bit_exact(tmp_path, train_states, index):
    tree = train_states[index]
    manager = checkpoint.CheckpointManager(tmp_path, max_to_keep=2)
    manager.save(3, tree)
    step, restored = manager.restore_latest(_fresh_like(tree))
    assert step == 3
    _assert_identical(restored, tree)
    if index == 1:  # K-FAC's own state class survives (not just a dict of leaves)
        assert type(restored["opt_state"]) is type(tree["opt_state"])
        assert int(restored["opt_state"].step_counter) == 3


def test_python_scalars_and_sharded_targets(tmp_path):
    mesh = optim.make_data_mesh(jax.devices()[:1])
    replicated = optim.replicated(mesh)
    tree = {"a": jax.device_put(jnp.arange(4.0), replicated), "n": 7, "x": 0.5}
    manager = checkpoint.CheckpointManager(tmp_path)
    manager.save(1, tree)
    target = {"a": jax.ShapeDtypeStruct((4,), jnp.float32, sharding=replicated), "n": 0,
              "x": 0.0}
    step, restored = manager.restore_latest(target)
    assert step == 1 and restored["n"] == 7 and restored["x"] == 0.5
    assert type(restored["n"]) is int and type(restored["x"]) is float
    assert restored["a"].sharding == replicated
    np.testing.assert_array_equal(restored["a"], np.arange(4.0))


def test_keeps_last_k(tmp_path):
    manager = checkpoint.CheckpointManager(tmp_path, max_to_keep=2)
    for step in range(1, 6):
        manager.save(step * 10, {"w": np.full(3, step, np.float32)})
    assert manager.all_steps() == [40, 50]
    assert sorted(int(d) for d in os.listdir(tmp_path) if d.isdigit()) == [40, 50]
    step, restored = manager.restore_latest({"w": np.zeros(3, np.float32)})
    assert step == 50 and restored["w"].tolist() == [5, 5, 5]


def _data_files(step_dir):
    """Files holding the saved arrays (not orbax's metadata)."""
    found = []
    for root, _, files in os.walk(os.path.join(step_dir, "state")):
        found += [os.path.join(root, f) for f in files
                  if os.sep + "d" + os.sep in os.path.join(root, f) + os.sep or root.endswith("d")]
    return [f for f in found if os.path.basename(os.path.dirname(f)) == "d"]


def _truncate_data(step_dir):
    for path in _data_files(step_dir):
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)


def _garble_data(step_dir):
    for path in _data_files(step_dir):
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.write(bytes((i * 37 + 11) % 256 for i in range(size)))


def _garble_record(step_dir):
    with open(os.path.join(step_dir, "integrity", "metadata"), "w") as f:
        f.write("{not json")


def _tamper_digest(step_dir):
    # A well-formed record whose digest no longer matches: the sha256 check itself.
    path = os.path.join(step_dir, "integrity", "metadata")
    with open(path) as f:
        record = json.load(f)
    record["sha256"] = "0" * 64
    with open(path, "w") as f:
        json.dump(record, f)


def _remove_manifest(step_dir):
    # (Removing only orbax's _METADATA is harmless: the arrays still restore and verify.)
    os.remove(os.path.join(step_dir, "state", "manifest.ocdbt"))


# Failed reads in orbax's async machinery can leave an "Event loop is closed" behind.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("corrupt", [_truncate_data, _garble_data, _garble_record,
                                     _tamper_digest, _remove_manifest])
def test_corrupt_latest_falls_back_to_previous(tmp_path, caplog, corrupt):
    manager = checkpoint.CheckpointManager(tmp_path, max_to_keep=3)
    rs = np.random.RandomState(0)
    trees = {s: {"w": rs.randn(64, 32).astype(np.float32), "k": np.arange(s, s + 4)}
             for s in (1, 2)}
    for s, tree in trees.items():
        manager.save(s, tree)
    assert _data_files(tmp_path / "2") or corrupt not in (_truncate_data, _garble_data)
    corrupt(str(tmp_path / "2"))
    target = {"w": np.zeros((64, 32), np.float32), "k": np.zeros(4, np.int64)}
    with caplog.at_level(logging.WARNING, logger=checkpoint.__name__):
        step, restored = checkpoint.CheckpointManager(tmp_path).restore_latest(target)
    assert step == 1
    _assert_identical(restored, trees[1])
    assert "corrupt step 2" in caplog.text
    with pytest.raises(checkpoint.CorruptCheckpointError):
        manager.restore(2, target)


def test_none_when_no_valid_checkpoint(tmp_path):
    manager = checkpoint.CheckpointManager(tmp_path)
    assert manager.restore_latest({"w": np.zeros(2)}) is None
    manager.save(5, {"w": np.ones(2)})
    _garble_record(str(tmp_path / "5"))
    assert manager.restore_latest({"w": np.zeros(2)}) is None


def test_unfinished_write_is_invisible_and_cleaned_up(tmp_path):
    manager = checkpoint.CheckpointManager(tmp_path)
    manager.save(1, {"w": np.ones(2)})
    # What a crash mid-write leaves behind: orbax's temporary directory.
    partial = tmp_path / "2.orbax-checkpoint-tmp-1234567"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "_METADATA").write_text("{")
    reopened = checkpoint.CheckpointManager(tmp_path)
    assert reopened.all_steps() == [1]
    assert reopened.restore_latest({"w": np.zeros(2)})[0] == 1
    assert not partial.exists()


def test_saving_an_earlier_step_discards_later_ones(tmp_path):
    # E.g. after a NaN rollback to step 10, the next save at 20 replaces the old 20 and 30.
    manager = checkpoint.CheckpointManager(tmp_path, max_to_keep=5)
    for step in (10, 20, 30):
        manager.save(step, {"w": np.full(2, step)})
    manager.save(20, {"w": np.full(2, -1)})
    assert manager.all_steps() == [10, 20]
    assert manager.restore_latest({"w": np.zeros(2, np.int64)})[1]["w"].tolist() == [-1, -1]


def test_mismatched_target_raises_instead_of_falling_back(tmp_path):
    manager = checkpoint.CheckpointManager(tmp_path)
    manager.save(1, {"w": np.ones(2, np.float32)})
    with pytest.raises(ValueError, match="do not match"):
        manager.restore_latest({"w": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="do not match"):
        manager.restore_latest({"w": np.zeros(2, np.float64)})
    with pytest.raises(TypeError):
        manager.restore_latest({"w": "not an array"})
