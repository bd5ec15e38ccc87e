"""SGD / Adam / K-FAC behind one step interface: update rules, L2, decrease, BN state."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dks_jax import optim

NUM_CLASSES = 3


def _mlp(x, is_training, batch_norm):
    h = hk.Linear(16)(x)
    if batch_norm:
        h = hk.BatchNorm(create_scale=True, create_offset=True, decay_rate=0.9)(h, is_training)
    return hk.Linear(NUM_CLASSES)(jax.nn.tanh(h))


def _setup(batch_norm=False, register=False, batch_size=64, mask=False):
    """A tiny classification problem: labels from a random linear teacher.

    With `mask`, the last quarter of the batch has mask weight 0.
    """
    model = hk.transform_with_state(lambda x, t: _mlp(x, t, batch_norm))
    rs = np.random.RandomState(0)
    x = rs.randn(batch_size, 6).astype(np.float32)
    batch = {"x": x, "y": np.argmax(x @ rs.randn(6, NUM_CLASSES), -1).astype(np.int32)}
    if mask:
        batch["mask"] = (np.arange(batch_size) < 3 * batch_size // 4).astype(np.float32)

    def loss_fn(params, state, rng, batch):
        logits, new_state = model.apply(params, state, rng, batch["x"], True)
        loss = optim.classification_loss(logits, batch["y"], label_smoothing=0.1,
                                         num_classes=NUM_CLASSES, register_for_kfac=register,
                                         mask=batch.get("mask"))
        return loss, (new_state, {"accuracy": optim.accuracy(logits, batch["y"])})

    params, state = jax.jit(model.init, static_argnums=2)(jax.random.PRNGKey(0), x, True)
    return loss_fn, params, state, batch


def _run(opt, loss_fn, params, state, batch, steps):
    rng = jax.random.PRNGKey(1)
    train_state = optim.TrainState.create(params, state, opt.init(params, state, rng, batch))
    step = opt.jit_step()
    first = None
    for t in range(steps):
        train_state, metrics = step(train_state, jax.random.fold_in(rng, t), batch)
        first = metrics if first is None else first
    params, opt_state, state = train_state.params, train_state.opt_state, train_state.state
    assert int(train_state.step) == steps
    final_loss = float(jax.jit(loss_fn)(params, state, rng, batch)[0])
    return params, opt_state, state, first, metrics, final_loss


@pytest.mark.parametrize("name,lr,kwargs", [
    ("sgd", 0.5, {}),                                  # Nesterov (default); heavy-ball: below
    ("sgd", 1.0, {"momentum": 0.0}),                   # plain SGD
    ("adam", 0.02, {}),
    ("kfac", 0.1, {"num_burnin_steps": 0, "inverse_update_period": 5, "norm_constraint": None}),
])
def test_loss_decreases(name, lr, kwargs):
    loss_fn, params, state, batch = _setup(register=name == "kfac")
    opt = optim.make_optimizer(name, loss_fn, lr, l2_reg=1e-4, **kwargs)
    _, _, _, first, last, final = _run(opt, loss_fn, params, state, batch, steps=20)
    assert final < 0.6 * float(first["loss"]), (first["loss"], final)
    for key in ("loss", "l2_loss", "objective", "learning_rate", "momentum", "accuracy"):
        assert np.isfinite(float(last[key])), key
    assert float(last["objective"]) == pytest.approx(float(last["loss"] + last["l2_loss"]),
                                                     rel=1e-6)
    assert float(last["learning_rate"]) == pytest.approx(lr, rel=1e-6)


def _quadratic_problem():
    """loss = 0.5 |w - 1|^2 + 0.5 |b - 1|^2: gradient (w - 1, b - 1), no Haiku."""
    params = {"layer": {"w": jnp.full((2, 2), 3.0), "b": jnp.full((2,), 3.0)}}

    def loss_fn(params, state, rng, batch):
        del rng, batch
        leaves = jax.tree_util.tree_leaves(params)
        return 0.5 * sum(jnp.sum((p - 1.0) ** 2) for p in leaves), (state, {})

    return loss_fn, params


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_update_rule_with_l2_on_weights_only(nesterov):
    loss_fn, params = _quadratic_problem()
    lr, m, l2 = 0.1, 0.9, 0.5
    opt = optim.make_optimizer("sgd", loss_fn, lr, l2_reg=l2, momentum=m, nesterov=nesterov)
    train_state = optim.TrainState.create(params, {}, opt.init(params, {}, jax.random.PRNGKey(0), None))
    step = opt.jit_step()
    w, b = 3.0, 3.0
    vw = vb = 0.0
    for t in range(3):
        train_state, metrics = step(train_state, jax.random.PRNGKey(0), None)
        params, opt_state = train_state.params, train_state.opt_state
        gw, gb = (w - 1.0) + l2 * w, (b - 1.0)  # L2 on the 2-D weight only
        vw, vb = m * vw + gw, m * vb + gb
        if nesterov:
            w, b = w - lr * (gw + m * vw), b - lr * (gb + m * vb)
        else:
            w, b = w - lr * vw, b - lr * vb
        np.testing.assert_allclose(params["layer"]["w"], np.full((2, 2), w), rtol=1e-6)
        np.testing.assert_allclose(params["layer"]["b"], np.full((2,), b), rtol=1e-6)
    assert int(opt_state.count) == 3


def test_learning_rate_metric_follows_schedule():
    loss_fn, params = _quadratic_problem()
    sched = optim.get_schedule("cosine", peak_value=0.2, total_steps=6, warmup_steps=2)
    opt = optim.make_optimizer("adam", loss_fn, sched)
    rng = jax.random.PRNGKey(0)
    train_state = optim.TrainState.create(params, {}, opt.init(params, {}, rng, None))
    step = opt.jit_step(None)
    for t in range(6):
        train_state, metrics = step(train_state, rng, None)
        assert float(metrics["learning_rate"]) == pytest.approx(float(sched(t)), abs=1e-7)


@pytest.mark.slow
def test_kfac_with_batch_norm_state_and_burnin():
    loss_fn, params, state, batch = _setup(batch_norm=True, register=True, mask=True)
    # No L2 here: kfac_jax's registered-loss stat (checked below) adds L2 over
    # *all* params, biases included. (tests/test_optim_parallel.py runs K-FAC
    # with BatchNorm and L2.)
    opt = optim.make_optimizer("kfac", loss_fn, 0.1, num_burnin_steps=2, inverse_update_period=5,
                               norm_constraint=None,
                               extra_kwargs={"include_registered_loss_in_stats": True})
    assert opt.needs_loss_registration and opt.num_burnin_steps == 2
    rng = jax.random.PRNGKey(1)
    opt_state = opt.init(params, state, rng, batch)
    opt_state, state = opt.burnin(params, opt_state, state, rng, iter([batch, batch]))
    assert int(opt_state.step_counter) == 0  # burn-in does not count as a step
    factors = jax.tree_util.tree_leaves(opt_state.estimator_state)
    assert any(np.abs(np.asarray(f)).sum() > 0 for f in factors)
    initial_stats = jax.tree_util.tree_map(np.array, state)
    step = opt.jit_step()
    first = None
    train_state = optim.TrainState.create(params, state, opt_state)
    for t in range(15):
        train_state, metrics = step(train_state, jax.random.fold_in(rng, t), batch)
        first = metrics if first is None else first
    params, opt_state, state = train_state.params, train_state.opt_state, train_state.state
    first_loss = float(first["loss"])
    # Vector (smoothed one-hot) targets make kfac's registered loss equal ours
    # (integer targets would give the unsmoothed loss), and so does the
    # weight B / sum(mask) passed with the mask.
    assert float(first["loss_registered"]) == pytest.approx(first_loss, rel=1e-5)
    assert float(metrics["loss"]) < 0.6 * first_loss
    assert int(opt_state.step_counter) == 15
    for key in ("damping", "precon_damping", "momentum", "learning_rate", "data_seen", "step"):
        assert key in metrics, key
    assert float(metrics["damping"]) == pytest.approx(1e-3)
    # Batch-norm moving statistics were threaded through the steps.
    moved = jax.tree_util.tree_map(lambda a, b: np.abs(np.asarray(a) - b).max(), state,
                                   initial_stats)
    assert max(jax.tree_util.tree_leaves(moved)) > 1e-3


def test_kfac_burnin_needs_enough_batches():
    loss_fn, params, state, batch = _setup(register=True, batch_size=8)
    opt = optim.make_optimizer("kfac", loss_fn, 0.05, num_burnin_steps=3)
    with pytest.raises(ValueError, match="needs 3 batches, got 1"):
        opt.burnin(params, None, state, jax.random.PRNGKey(0), [batch])


def test_first_order_burnin_is_a_noop():
    loss_fn, params = _quadratic_problem()
    opt = optim.make_optimizer("sgd", loss_fn, 0.1)
    opt_state = opt.init(params, {}, jax.random.PRNGKey(0), None)
    assert opt.burnin(params, opt_state, {}, jax.random.PRNGKey(0), []) == (opt_state, {})


def test_registry_errors():
    loss_fn, _ = _quadratic_problem()
    assert optim.list_optimizers() == ["adam", "kfac", "sgd"]
    with pytest.raises(ValueError, match="adam.*kfac.*sgd"):
        optim.make_optimizer("lamb", loss_fn, 0.1)
    with pytest.raises(ValueError, match="nesterov"):
        optim.make_optimizer("sgd", loss_fn, 0.1, nesterof=True)
    with pytest.raises(ValueError):
        optim.make_optimizer("sgd", loss_fn, 0.1, config=optim.AdamConfig())
    with pytest.raises(ValueError):
        optim.make_optimizer("sgd", loss_fn, 0.1, config=optim.SGDConfig(), momentum=0.5)
    opt = optim.make_optimizer("sgd", loss_fn, 0.1, config=optim.SGDConfig(momentum=0.5))
    assert isinstance(opt, optim.StepOptimizer) and opt.config.momentum == 0.5
    with pytest.raises(ValueError, match="extra_kwargs"):
        optim.KFACConfig(extra_kwargs={"multi_device": True})


def test_reserved_aux_names_are_rejected():
    params = {"w": jnp.ones((2, 2))}

    def loss_fn(params, state, rng, batch):
        loss = jnp.sum(params["w"] ** 2)
        return loss, (state, {"learning_rate": loss})

    opt = optim.make_optimizer("sgd", loss_fn, 0.1)
    with pytest.raises(ValueError, match="reserved"):
        opt.step(params, opt.init(params, {}, None, None), {}, jax.random.PRNGKey(0), None, 0)


def test_jit_step_rejects_explicit_mesh():
    loss_fn, _ = _quadratic_problem()
    opt = optim.make_optimizer("sgd", loss_fn, 0.1)
    explicit = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    with pytest.raises(ValueError, match="Auto"):
        opt.jit_step(explicit)
    with pytest.raises(ValueError, match="data"):
        opt.jit_step(jax.make_mesh((1,), ("batch",),
                                   axis_types=(jax.sharding.AxisType.Auto,)))
