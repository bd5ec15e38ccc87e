"""K-FAC's graph matcher registers every dense / conv layer of our networks as a dense / conv2d block.

Uses kfac-jax 0.0.8's public curvature estimator (the one its Optimizer builds): after ``finalize`` every
parameter maps to a block, whose class says how it was registered. A "generic" registration (NaiveDiagonal
block) means the matcher did not recognise the layer and K-FAC would precondition it with a diagonal only.
"""

import jax
import jax.numpy as jnp
import kfac_jax
import pytest

from conftest import make_config
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
