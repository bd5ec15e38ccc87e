"""A real tiny language-model training run: vanilla E-SPA transformer with TAT Leaky ReLU on the corpus.

Driven directly with ``dks_jax.optim.make_optimizer`` (the training loop is wired to sequence models in
phase 2): the loss on a fixed validation batch must fall well below its initial value, and K-FAC's graph
matcher must register every dense layer of the transformer (embedding and attention projections included)
as a Kronecker-factored dense block.
"""

import math

import jax
import jax.numpy as jnp
import kfac_jax
import numpy as np
import pytest

from conftest import dict_config
from dks_jax import data
from dks_jax import nets
from dks_jax import optim
from dks_jax.data import paths
from dks_jax.data import text
from dks_jax.optim import lm_losses

CORPUS = paths.resolve_data_dir() / text.CORPUS_FOLDER
pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus not found at {CORPUS}")
SEQ_LEN, BATCH = 32, 16


def _model(**fields):
    config = dict(model="transformer", depth=2, width=32, num_heads=4, mlp_ratio=2, attention="espa",
                  activation="leaky_relu", method="TAT", c_val_0_target=0.3)
    config.update(fields)
    return nets.build_model(dict_config(**config), data.get_dataset("cpython_chars", "test").num_classes, (SEQ_LEN,))


def _loss_fn(model):
    def loss_fn(params, state, rng, batch):
        logits, new_state = model.apply(params, state, rng, batch["tokens"], is_training=True)
        loss = lm_losses.lm_loss(logits, batch["targets"], register_for_kfac=True)
        return loss, (new_state, {"accuracy": lm_losses.token_accuracy(logits, batch["targets"])})
    return loss_fn


def _train(model, name, learning_rate, steps, **options):
    train = data.get_dataset("cpython_chars", "train")
    valid = data.get_dataset("cpython_chars", "validation")
    first = text.train_batch(train, 0, global_batch_size=BATCH, seq_len=SEQ_LEN, seed=0)
    params, state = model.init(jax.random.PRNGKey(0), jnp.asarray(first["tokens"]))
    opt = optim.make_optimizer(name, _loss_fn(model), learning_rate, **options)
    rng = jax.random.PRNGKey(1)
    train_state = optim.TrainState.create(params, state, opt.init(params, state, rng, first))
    step = opt.jit_step()
    eval_batch = text.eval_batch(valid, 0, global_batch_size=BATCH, seq_len=SEQ_LEN)

    @jax.jit
    def evaluate(params):
        logits, _ = model.apply(params, state, None, eval_batch["tokens"])
        sums = lm_losses.lm_eval_sums(logits, eval_batch["targets"], eval_batch["mask"])
        return sums["nll_sum"] / sums["count"]

    before = float(evaluate(params))
    with text.train_iterator(train, global_batch_size=BATCH, seq_len=SEQ_LEN, seed=0,
                             num_steps=steps) as batches:
        for t, batch in enumerate(batches):
            train_state, metrics = step(train_state, jax.random.fold_in(rng, t), batch)
    assert np.isfinite(float(metrics["loss"]))
    return before, float(evaluate(train_state.params))


@pytest.mark.parametrize("name,learning_rate", [("sgd", 0.05), ("adam", 0.01)])
def test_tiny_lm_training_decreases_the_validation_loss(name, learning_rate):
    before, after = _train(_model(), name, learning_rate, steps=30)
    # At initialization the model is far from uniform (log 97 = 4.57 nats); 30 steps reach unigram-like
    # statistics (about 3.5 nats, 5 bits per character).
    assert before > 4.5 and after < before - 1.0, (before, after)
    assert lm_losses.bits_per_character(after, 1.0) < math.log2(97)


@pytest.mark.slow
def test_tiny_lm_training_with_kfac():
    options = dict(damping=1.0, num_burnin_steps=0, inverse_update_period=5,
                   extra_kwargs={"batch_size_extractor": lm_losses.kfac_batch_size})
    before, after = _train(_model(block="norm_only"), "kfac", 0.1, steps=15, **options)
    assert after < before - 1.0, (before, after)


@pytest.mark.parametrize("fields", [dict(attention="espa", positional="learned"),
                                    dict(attention="value_skipinit", block="norm_only")])
def test_kfac_registers_every_dense_layer_as_a_kronecker_block(fields):
    model = _model(**fields)
    tokens = jnp.zeros((2, SEQ_LEN), jnp.int32)
    batch = {"tokens": tokens, "targets": tokens}
    params, state = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype),
                                           jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens))
    loss = lambda p, b: _loss_fn(model)(p, state, None, b)[0]
    estimator = kfac_jax.BlockDiagonalCurvature(loss)
    estimator.finalize((params, batch))
    kinds = {module: {type(estimator.blocks[i]).__name__ for i in leaves.values()}
             for module, leaves in estimator.params_block_index.items()}
    dense = [m for m in params if "w" in params[m]]
    assert dense and all(kinds[m] == {"DenseTwoKroneckerFactored"} for m in dense), kinds
    for module in params:
        if module.endswith("norm"):
            assert kinds[module] <= {"ScaleAndShiftDiagonal", "ScaleAndShiftFull"}, kinds[module]
