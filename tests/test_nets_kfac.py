"""K-FAC's graph matcher registers every dense / conv layer of our networks as a dense / conv2d block.

Uses kfac-jax 0.0.8's public curvature estimator (the one its Optimizer builds): after ``finalize`` every
parameter maps to a block, whose class says how it was registered. A "generic" registration (NaiveDiagonal
block) means the matcher did not recognise the layer and K-FAC would precondition it with a diagonal only.
Also: our explicit-patch conv statistics equal kfac_jax's own on every conv of a ResNet (stem, strided).
"""

import functools

import jax
import jax.numpy as jnp
import kfac_jax
import numpy as np
import pytest

from conftest import make_config
from dks_jax import optim
from dks_jax.kernels import graph as g
from dks_jax.nets import models


def _blocks_by_param(model):
    x = jax.random.normal(jax.random.PRNGKey(0), (2,) + model.input_shape)
    labels = jnp.array([0, 1])
    # Only shapes matter to the graph matcher: zeros skip compiling the (deep) initialization.
    params, state = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype),
                                           jax.eval_shape(model.init, jax.random.PRNGKey(1), x))

    def loss(params, batch):
        images, targets = batch
        logits, _ = model.apply(params, state, None, images, is_training=False)
        kfac_jax.register_softmax_cross_entropy_loss(logits, targets)
        return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), targets[:, None], axis=1))

    estimator = kfac_jax.BlockDiagonalCurvature(loss)
    estimator.finalize((params, (x, labels)))
    index = estimator.params_block_index
    return {module: {name: type(estimator.blocks[i]).__name__ for name, i in leaves.items()}
            for module, leaves in index.items()}, params


def _expected_kinds(model):
    """Number of Dense and Conv layers of the spec (those reaching the output)."""
    nodes = list(g.iter_nodes(model.spec))
    return (sum(isinstance(n, g.Dense) for n in nodes), sum(isinstance(n, g.Conv) for n in nodes))


def _config(**fields):
    return make_config(**{"stem": "small", "width_multiplier": 1 / 16, **fields})


@pytest.mark.parametrize("fields,shape", [
    (dict(model="mlp", depth=20, width=16), (6, 6, 1)),
    (dict(model="convnet", depth=16, width=8), (12, 12, 1)),
    *[pytest.param(dict(model="vanilla_resnet", depth=d), (16, 16, 3),
                   marks=[pytest.mark.slow] if d > 34 else []) for d in (18, 34, 50, 101, 152, 200)],
    *[pytest.param(dict(model="tat_resnet", depth=d, shortcut_weight=0.8, **{"tat.c_val_0_target": 0.8}),
                   (16, 16, 3), marks=[pytest.mark.slow] if d > 18 else []) for d in (18, 34, 50, 101)],
])
def test_every_dense_and_conv_gets_a_kronecker_factored_block(fields, shape):
    model = models.build_model(_config(**fields), 10, shape)
    blocks, params = _blocks_by_param(model)
    assert set(blocks) == set(params)
    dense = [m for m, leaves in blocks.items() if set(leaves.values()) == {"DenseTwoKroneckerFactored"}]
    conv = [m for m, leaves in blocks.items() if set(leaves.values()) == {"Conv2DTwoKroneckerFactored"}]
    other = {m: leaves for m, leaves in blocks.items() if m not in dense and m not in conv}
    assert not other, f"not registered as dense/conv2d (generic or mixed): {other}"
    assert (len(dense), len(conv)) == _expected_kinds(model)
    # Dense params are the hk.Linear modules, conv params the hk.Conv2D ones.
    assert all(params[m]["w"].ndim == 2 for m in dense) and all(params[m]["w"].ndim == 4 for m in conv)


def test_patch_statistics_match_kfac_jax_on_every_conv_of_a_resnet():
    """The explicit-patches input factors equal kfac_jax's own on every conv of a vanilla ResNet-18:
    the 3x3 stem on the (PLN-extended) input, the stride-1 and the stride-2 convolutions."""
    model = models.build_model(_config(model="vanilla_resnet", depth=18, pln_mode="const"), 10,
                               (8, 8, 3))
    batch = {"image": jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 3)),
             "label": jnp.array([0, 1, 2, 3])}
    params, state = model.init(jax.random.PRNGKey(1), batch["image"])

    def loss_fn(params, state, rng, batch):
        logits, new_state = model.apply(params, state, rng, batch["image"], is_training=True)
        loss = optim.classification_loss(logits, batch["label"], label_smoothing=0.0,
                                         num_classes=10, register_for_kfac=True)
        return loss, (new_state, {})

    opt = optim.make_optimizer("kfac", loss_fn, 0.1, curvature_batch_fraction=1.0)
    rng = jax.random.PRNGKey(2)
    opt.init(params, state, rng, batch)
    estimator = opt.kfac_optimizer._estimator  # pylint: disable=protected-access

    @jax.jit
    def layer_inputs(params):  # every block's inputs, from the estimator's own pass
        losses, losses_vjp = estimator._compute_losses_vjp((params, state, rng, batch))  # pylint: disable=protected-access
        vectors = tuple(loss.multiply_ggn_factor(jnp.ones(loss.ggn_factor_inner_shape))
                        for loss in losses)
        return [data.primals.inputs[0] for data in losses_vjp(vectors)]

    inputs = layer_inputs(params)
    strides = set()
    convs = [i for i, b in enumerate(estimator.blocks)
             if isinstance(b, kfac_jax.Conv2DTwoKroneckerFactored)]
    assert len(convs) == _expected_kinds(model)[1]
    for i in convs:
        block = estimator.blocks[i]
        assert type(block).__name__ == "PatchesConv2DKroneckerFactored"
        strides.add(block._layer_tag_eq.params["window_strides"][0])  # pylint: disable=protected-access
        ours = jax.jit(block.compute_inputs_stats)(inputs[i])
        theirs = jax.jit(functools.partial(kfac_jax.Conv2DTwoKroneckerFactored.compute_inputs_stats,
                                           block))(inputs[i])
        kh, kw, c_in, _ = block.parameters_shapes[0]
        assert ours.shape == theirs.shape == (kh * kw * c_in + 1,) * 2  # conv biases: the + 1
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    assert strides == {1, 2}
