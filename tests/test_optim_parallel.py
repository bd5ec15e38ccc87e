"""The jitted step gives the same result on 1 device and on 2 (simulated) CPU devices.

The 2-device run happens in a subprocess started with
XLA_FLAGS=--xla_force_host_platform_device_count=2, which must be set before
jax is imported; it runs `_train_all` below (this module is imported there) and
writes its results to an .npz file. Params are compared with a tight tolerance:
exact equality is not expected because the cross-device reductions change the
floating-point summation order.
"""

import os
import subprocess
import sys

import haiku as hk
import jax
import numpy as np
import pytest

from dks_jax import optim

NUM_CLASSES = 4
GLOBAL_BATCH = 16
STEPS = 4
# (Adam shares SGD's code path; it is left out to keep the test fast.)
CONFIGS = {
    "sgd": (0.1, {}),
    "kfac": (0.05, {"num_burnin_steps": 1, "inverse_update_period": 2}),
}


def _net(x):
    # No bias before BatchNorm: its gradient is pure rounding noise, which an
    # adaptive method (Adam) would blow up to full-size, device-count-dependent steps.
    h = hk.Linear(8, with_bias=False)(x)
    h = hk.BatchNorm(create_scale=True, create_offset=True, decay_rate=0.9)(h, True)
    return hk.Linear(NUM_CLASSES)(jax.nn.tanh(h))


def _batch(index):
    rs = np.random.RandomState(index)
    x = rs.randn(GLOBAL_BATCH, 5).astype(np.float32)
    return {"x": x, "y": (np.abs(x[:, :NUM_CLASSES]).argmax(-1)).astype(np.int32)}


def _train(name, mesh):
    """A few data-parallel steps of a BatchNorm MLP; returns flat params, state, metrics."""
    model = hk.transform_with_state(_net)

    def loss_fn(params, state, rng, batch):
        logits, new_state = model.apply(params, state, rng, batch["x"])
        loss = optim.classification_loss(logits, batch["y"], label_smoothing=0.1,
                                         num_classes=NUM_CLASSES, register_for_kfac=True)
        return loss, (new_state, {})

    lr, kwargs = CONFIGS[name]
    opt = optim.make_optimizer(name, loss_fn, lr, l2_reg=1e-3, **kwargs)
    rng = jax.random.PRNGKey(0)
    params, state = jax.jit(model.init)(rng, _batch(0)["x"])
    params, state = optim.replicate((params, state), mesh)
    opt_state = opt.init(params, state, rng, optim.shard_batch(_batch(0), mesh))
    opt_state, state = opt.burnin(params, opt_state, state, rng,
                                  (_batch(100 + i) for i in range(5)), mesh)
    step = opt.jit_step(mesh)
    losses = []
    train_state = optim.TrainState.create(params, state, opt_state)
    for t in range(STEPS):
        batch = optim.shard_batch(_batch(t), mesh)
        train_state, metrics = step(train_state, jax.random.fold_in(rng, t), batch)
        losses.append(float(metrics["loss"]))
    params, state = train_state.params, train_state.state
    leaf = jax.tree_util.tree_leaves(params)[0]
    out = {f"p{i}": np.asarray(a) for i, a in enumerate(jax.tree_util.tree_leaves(params))}
    out.update({f"s{i}": np.asarray(a) for i, a in enumerate(jax.tree_util.tree_leaves(state))})
    out["losses"] = np.array(losses)
    out["devices"] = np.array(len(leaf.sharding.device_set))
    out["replicated"] = np.array(leaf.sharding.is_fully_replicated)
    return out


def _train_all(num_devices):
    mesh = optim.make_data_mesh(jax.devices()[:num_devices])
    return {f"{name}/{key}": value for name in CONFIGS
            for key, value in _train(name, mesh).items()}


def _main(path):
    """Subprocess entry point: train on 2 devices, save the results."""
    assert jax.device_count() == 2, jax.devices()
    np.savez(path, **_train_all(2))


@pytest.mark.slow
def test_one_device_equals_two_devices(tmp_path):
    path = tmp_path / "two_devices.npz"
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(here)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    code = (f"import sys; sys.path[:0] = [{here!r}, {repo!r}]; "
            f"import test_optim_parallel as t; t._main({str(path)!r})")
    # The 2-device run overlaps with the 1-device run below.
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        one = _train_all(1)
        output, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, output[-3000:]
    two = dict(np.load(path))
    assert sorted(one) == sorted(two)
    for name in CONFIGS:
        assert int(one[f"{name}/devices"]) == 1 and int(two[f"{name}/devices"]) == 2
        assert bool(two[f"{name}/replicated"]), "params must stay replicated"
        # The loss must actually change, or equality would be vacuous.
        assert abs(one[f"{name}/losses"][-1] - one[f"{name}/losses"][0]) > 1e-3
    compared = [key for key in one if not key.endswith(("/devices", "/replicated"))]
    assert len(compared) > 2 * 6
    for key in compared:
        np.testing.assert_allclose(one[key], two[key], rtol=1e-5, atol=1e-5, err_msg=key)
