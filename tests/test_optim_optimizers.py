"""SGD / Adam / K-FAC behind one step interface: update rules, L2, decrease, BN state."""

import os
import re
import subprocess
import sys

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
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


# ---------------------------------------------------------------------------------------------
# K-FAC's cost settings: curvature sub-batch, block types, conv factor statistics, inverses.


def _kfac_block(opt, module, name="w"):
    """The curvature block (and its index) of parameter `module/name` in a K-FAC optimizer."""
    estimator = opt.kfac_optimizer._estimator  # pylint: disable=protected-access
    index = estimator.params_block_index[module][name]
    return index, estimator.blocks[index]


def _one_kfac_step(loss_fn, params, state, batch, lr=0.1, **kfac_fields):
    opt = optim.make_optimizer("kfac", loss_fn, lr, num_burnin_steps=0, **kfac_fields)
    rng = jax.random.PRNGKey(1)
    opt_state = opt.init(params, state, rng, batch)
    train_state, metrics = opt.jit_step()(optim.TrainState.create(params, state, opt_state), rng,
                                          batch)
    return opt, train_state.params, train_state.opt_state, metrics


def _with_ones(x):
    return np.concatenate([x, np.ones((x.shape[0], 1), x.dtype)], axis=1)


@pytest.mark.parametrize("fraction", [1.0, 0.25])
def test_kfac_curvature_is_estimated_on_the_sub_batch(fraction):
    loss_fn, params, state, batch = _setup(register=True, batch_size=16)
    params_copy = jax.tree_util.tree_map(np.array, params)
    opt, _, opt_state, metrics = _one_kfac_step(loss_fn, params_copy, state, batch,
                                                curvature_batch_fraction=fraction)
    # The first layer's input factor is the second moment of [x, 1] over the examples the
    # curvature saw: every 1/fraction-th one.
    index, _ = _kfac_block(opt, "linear")
    factor = np.asarray(opt_state.estimator_state.blocks_states[index].factors[0].value)
    x_sub = _with_ones(batch["x"][::round(1 / fraction)])
    np.testing.assert_allclose(factor, x_sub.T @ x_sub / len(x_sub), rtol=1e-5, atol=1e-6)
    if fraction < 1:
        x_all = _with_ones(batch["x"])
        assert np.abs(factor - x_all.T @ x_all / len(x_all)).max() > 1e-2
    # The loss, gradient and data count still use the whole batch.
    assert int(metrics["data_seen"]) == 16
    assert float(metrics["loss"]) == pytest.approx(float(jax.jit(loss_fn)(
        params, state, jax.random.PRNGKey(1), batch)[0]), rel=1e-5)


def test_kfac_config_rejects_bad_cost_settings():
    for fields in (dict(curvature_batch_fraction=0.3), dict(curvature_batch_fraction=0.0),
                   dict(conv_block="full"), dict(dense_block="kronecker"),
                   dict(conv_factor_stats="loop"), dict(inverse_method="qr")):
        with pytest.raises(ValueError):
            optim.KFACConfig(**fields)
    with pytest.raises(ValueError, match="extra_kwargs"):
        optim.KFACConfig(extra_kwargs={"layer_tag_to_block_ctor": {}})
    loss_fn, params, state, batch = _setup(register=True, batch_size=6)
    opt = optim.make_optimizer("kfac", loss_fn, 0.1, num_burnin_steps=0)  # stride 4 does not divide 6
    with pytest.raises(ValueError, match="multiple of the stride 4"):
        opt.jit_step()(optim.TrainState.create(
            params, state, opt.init(params, state, jax.random.PRNGKey(0), batch)),
            jax.random.PRNGKey(0), batch)


def _conv_setup(batch_size=4):
    """Two convolutions reading the input directly (one 3x3/1 with bias, one 3x3/2 without) on
    7x6 images, so both input factors are functions of the data alone."""

    def net(x):
        a = hk.Conv2D(4, 3, stride=1, name="conv_s1")(x)
        b = hk.Conv2D(5, 3, stride=2, with_bias=False, name="conv_s2")(x)
        flat = [jax.nn.tanh(h).reshape(h.shape[0], -1) for h in (a, b)]
        return hk.Linear(NUM_CLASSES, name="logits")(jnp.concatenate(flat, axis=1))

    model = hk.transform_with_state(net)
    rs = np.random.RandomState(0)
    x = rs.randn(batch_size, 7, 6, 2).astype(np.float32)
    batch = {"x": x, "y": rs.randint(0, NUM_CLASSES, batch_size).astype(np.int32)}

    def loss_fn(params, state, rng, batch):
        logits, new_state = model.apply(params, state, rng, batch["x"])
        loss = optim.classification_loss(logits, batch["y"], label_smoothing=0.0,
                                         num_classes=NUM_CLASSES, register_for_kfac=True)
        return loss, (new_state, {})

    params, state = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    return loss_fn, params, state, batch


def _patch_second_moment(x, kernel, stride, bias):
    """By hand: mean over examples and output locations of p p^T, p the (kh, kw, C)-ordered patch
    under XLA's SAME padding (low side gets the smaller half), with a trailing 1 for a bias."""
    n, h, w, _ = x.shape
    pads = []
    for size in (h, w):
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        pads.append((out, total // 2, total - total // 2))
    (out_h, lo_h, hi_h), (out_w, lo_w, hi_w) = pads
    xp = np.pad(x, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)))
    patches = np.concatenate([
        xp[:, i * stride:i * stride + kernel, j * stride:j * stride + kernel, :].reshape(n, -1)
        for i in range(out_h) for j in range(out_w)])
    if bias:
        patches = _with_ones(patches)
    return patches.T @ patches / len(patches)


@pytest.mark.parametrize("conv_factor_stats,block_class", [
    ("patches", "PatchesConv2DKroneckerFactored"),
    ("kfac_jax", "Conv2DKroneckerFactored"),
])
def test_kfac_conv_input_factor_matches_patches_by_hand(conv_factor_stats, block_class):
    loss_fn, params, state, batch = _conv_setup()
    opt, _, opt_state, _ = _one_kfac_step(loss_fn, params, state, batch, curvature_batch_fraction=1.0,
                                          conv_factor_stats=conv_factor_stats)
    for module, stride, bias, c_out in (("conv_s1", 1, True, 4), ("conv_s2", 2, False, 5)):
        index, block = _kfac_block(opt, module)
        assert type(block).__name__ == block_class
        factors = opt_state.estimator_state.blocks_states[index].factors
        expected = _patch_second_moment(batch["x"], 3, stride, bias)
        assert factors[0].value.shape == (9 * 2 + bias,) * 2 and factors[1].value.shape == (c_out,) * 2
        np.testing.assert_allclose(np.asarray(factors[0].value), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("conv_block,dense_block,conv_class,dense_class", [
    ("kron", "kron", "PatchesConv2DKroneckerFactored", "DenseKroneckerFactored"),
    ("diag", "diag", "Conv2DDiagonal", "DenseDiagonal"),
])
def test_kfac_block_types(conv_block, dense_block, conv_class, dense_class):
    loss_fn, params, state, batch = _conv_setup()
    opt, new_params, opt_state, _ = _one_kfac_step(loss_fn, params, state, batch,
                                                   conv_block=conv_block, dense_block=dense_block,
                                                   curvature_batch_fraction=1.0)
    for module, cls in (("conv_s1", conv_class), ("conv_s2", conv_class), ("logits", dense_class)):
        index, block = _kfac_block(opt, module)
        assert type(block).__name__ == cls
        block_state = opt_state.estimator_state.blocks_states[index]
        if conv_block == "diag":  # one diagonal per parameter, shaped like it
            shapes = sorted(d.value.shape for d in block_state.diagonal_factors)
            assert shapes == sorted(p.shape for p in params[module].values())
            assert all(np.all(np.asarray(d.value) >= 0) for d in block_state.diagonal_factors)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(new_params))


def _linear_softmax_setup(batch_size=16):
    model = hk.transform_with_state(lambda x: hk.Linear(NUM_CLASSES, with_bias=False)(x))
    rs = np.random.RandomState(3)
    batch = {"x": rs.randn(batch_size, 5).astype(np.float32),
             "y": rs.randint(0, NUM_CLASSES, batch_size).astype(np.int32)}

    def loss_fn(params, state, rng, batch):
        logits, new_state = model.apply(params, state, rng, batch["x"])
        loss = optim.classification_loss(logits, batch["y"], label_smoothing=0.0,
                                         num_classes=NUM_CLASSES, register_for_kfac=True)
        return loss, (new_state, {})

    params, state = jax.jit(model.init)(jax.random.PRNGKey(0), batch["x"])
    return loss_fn, params, state, batch


@pytest.mark.parametrize("inverse_update_period", [1, 50])  # computed in place / from the cache
@pytest.mark.parametrize("exact,inverse_method", [(False, "cholesky"), (False, "lu"),
                                                  (True, "cholesky")])
def test_kfac_update_exact_and_pi_adjusted_inverses(exact, inverse_method, inverse_update_period):
    """Step 0 of momentum-free K-FAC on a linear softmax model, against the formulas:
    exact: (A kron G + d I)^-1 g; pi-adjusted: (A + pi sqrt(d) I)^-1 g (G + sqrt(d) / pi I)^-1
    with pi^2 = (tr A / dim A) / (tr G / dim G); A, G the factors in the state after the step."""
    loss_fn, params, state, batch = _linear_softmax_setup()
    lr, damping = 0.5, 0.1
    g = np.asarray(jax.grad(lambda p: loss_fn(p, state, None, batch)[0])(params)["linear"]["w"])
    w0 = np.array(params["linear"]["w"])
    opt, new_params, opt_state, _ = _one_kfac_step(
        loss_fn, params, state, batch, lr=lr, momentum=0.0, damping=damping, norm_constraint=None,
        use_exact_inverses=exact, inverse_update_period=inverse_update_period,
        inverse_method=inverse_method, curvature_batch_fraction=1.0)
    a, gg = (np.asarray(f.value, np.float64)
             for f in opt_state.estimator_state.blocks_states[0].factors)
    if exact:
        sa, qa = np.linalg.eigh(a)
        sg, qg = np.linalg.eigh(gg)
        direction = qa @ ((qa.T @ g @ qg) / (np.outer(sa, sg) + damping)) @ qg.T
    else:
        pi = np.sqrt((np.trace(a) / len(a)) / (np.trace(gg) / len(gg)))
        root = np.sqrt(damping)
        direction = (np.linalg.inv(a + pi * root * np.eye(len(a))) @ g
                     @ np.linalg.inv(gg + root / pi * np.eye(len(gg))))
    np.testing.assert_allclose(np.asarray(new_params["linear"]["w"]) - w0, -lr * direction,
                               rtol=2e-4, atol=1e-6)
    if not exact:  # the factors are inverted by the chosen decomposition
        opt_state = opt.init(params, state, jax.random.PRNGKey(1), batch)
        jaxpr = str(jax.make_jaxpr(lambda p, s: opt.step(p, s, state, jax.random.PRNGKey(1), batch,
                                                         0))(params, opt_state))
        assert bool(re.search(r"= cholesky\b", jaxpr)) == (inverse_method == "cholesky")
        assert bool(re.search(r"= lu\b", jaxpr)) == (inverse_method == "lu")


def test_kfac_refreshes_inverses_only_every_period_steps():
    """Steps 0, 3, 6... recompute the cached inverses (a program of their own), the others reuse them."""
    loss_fn, params, state, batch = _linear_softmax_setup()
    opt = optim.make_optimizer("kfac", loss_fn, 0.1, num_burnin_steps=0, inverse_update_period=3,
                               curvature_batch_fraction=1.0)
    rng = jax.random.PRNGKey(1)
    train_state = optim.TrainState.create(params, state, opt.init(params, state, rng, batch))
    step = opt.jit_step()
    caches, factors = [], []
    for t in range(5):
        train_state, _ = step(train_state, jax.random.fold_in(rng, t), batch)
        block_state = train_state.opt_state.estimator_state.blocks_states[0]
        caches.append(np.array(jax.tree_util.tree_leaves(block_state.cache)[0]))
        factors.append(np.array(block_state.factors[1].value))
    assert not np.allclose(factors[0], factors[1])  # the curvature moves every step...
    np.testing.assert_array_equal(caches[1], caches[0])  # ...the inverses only at refresh steps
    np.testing.assert_array_equal(caches[2], caches[0])
    assert not np.allclose(caches[3], caches[2])
    np.testing.assert_array_equal(caches[4], caches[3])
    assert len(opt._jitted) == 2  # pylint: disable=protected-access  # refresh and other steps


def _lowered_text(name, loss_fn, params, state, batch, lr, **config):
    opt = optim.make_optimizer(name, loss_fn, lr, **config)
    rng = jax.random.PRNGKey(1)
    train_state = optim.TrainState.create(params, state, opt.init(params, state, rng, batch))
    return opt.lower(train_state, rng, batch).as_text()


@pytest.mark.parametrize("name,config_a,config_b", [
    ("sgd", {}, {}), ("adam", {}, {}),
    ("kfac", dict(damping=1e-3, momentum=0.9), dict(damping=0.3, momentum=0.5))])
def test_hyperparameter_grid_points_lower_to_one_program(name, config_a, config_b):
    """Runs that differ in the peak learning rate (and K-FAC's damping and momentum) lower to the same
    program text, so the persistent compilation cache serves every point of such a sweep after the
    first; a change of schedule shape (here the warm-up) still gives another program."""
    loss_fn, params, state, batch = _linear_softmax_setup()

    def text(peak, warmup=2, **config):
        lr = optim.get_schedule("cosine", peak_value=peak, total_steps=50, warmup_steps=warmup)
        return _lowered_text(name, loss_fn, params, state, batch, lr, **config)

    reference = text(0.1, **config_a)
    assert text(0.37, **config_b) == reference
    assert text(0.1, warmup=3, **config_a) != reference


@pytest.mark.parametrize("name", ["sgd", "kfac"])
def test_learning_rate_metric_is_scale_times_shape_at_the_step(name):
    """The compiled step multiplies the schedule's shape at the optimizer's own step counter (kfac_jax's
    for K-FAC) by the scale it is given; the metric equals the schedule at every step."""
    loss_fn, params, state, batch = _linear_softmax_setup()
    sched = optim.get_schedule("piecewise_constant", peak_value=0.3, total_steps=6, warmup_steps=2,
                               boundaries=(0.5,), factors=(0.1,))
    opt = optim.make_optimizer(name, loss_fn, sched)
    assert opt.runtime_hyperparams()["learning_rate"] == pytest.approx(0.3)
    rng = jax.random.PRNGKey(0)
    train_state = optim.TrainState.create(params, state, opt.init(params, state, rng, batch))
    step = opt.jit_step()
    seen = []
    for _ in range(6):
        train_state, metrics = step(train_state, rng, batch)
        seen.append(float(metrics["learning_rate"]))
    np.testing.assert_allclose(seen, [0.0, 0.15, 0.3, 0.03, 0.03, 0.03], rtol=1e-6, atol=1e-9)


# Prints a hash of the lowered K-FAC step of the tiny CIFAR-10 convnet config (conv, strided conv and
# dense layers) at the learning rate and damping given as arguments.
_LOWERED_KFAC_HASH = """
import hashlib, sys
import jax
from configs import cifar10
from dks_jax.train import loop
c = cifar10.get_config("optimizer=kfac,tiny=True")
c.learning_rate, c.optimizer.kfac.damping = float(sys.argv[1]), float(sys.argv[2])
exp = loop.Experiment(c)
text = exp.optimizer.lower(exp.init_state(), jax.random.PRNGKey(0), next(exp.train_iterator(0))).as_text()
print(hashlib.sha256(text.encode()).hexdigest())
"""


@pytest.mark.slow
def test_kfac_step_is_one_program_across_processes_and_grid_points():
    """Fresh processes lower the K-FAC step of one config to the same program, whatever its learning
    rate and damping (kfac_jax's tracer ordered some constants by memory address before
    `kfac._make_kfac_tracing_deterministic`, so every process compiled again)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    hashes = {subprocess.run([sys.executable, "-c", _LOWERED_KFAC_HASH, lr, damping], cwd=REPO, env=env,
                             check=True, capture_output=True, text=True).stdout.split()[-1]
              for lr, damping in (("0.01", "0.1"), ("0.01", "0.1"), ("0.3", "1e-3"))}
    assert len(hashes) == 1, hashes


def test_an_optimizer_without_runtime_hyperparameters_keeps_the_plain_step_signature():
    """A user's optimizer written against the six-argument `step` (no `hyper`) still jits and steps."""
    from dks_jax.optim import base  # pylint: disable=g-import-not-at-top

    class HalfStep(base.BaseOptimizer):
        name = "half_step"

        def init(self, params, func_state, rng, batch):
            return ()

        def step(self, params, opt_state, func_state, rng, batch, global_step):
            return jax.tree_util.tree_map(lambda p: 0.5 * p, params), opt_state, func_state, {}

    params = {"w": jnp.ones(3)}
    train_state, _ = HalfStep().jit_step()(optim.TrainState.create(params, {}, ()), None, None)
    np.testing.assert_allclose(train_state.params["w"], 0.5 * np.ones(3))
