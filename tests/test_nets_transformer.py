"""The Haiku transformer built from its layer specification, measured against the kernel machinery.

* An attention layer with zero-initialized queries maps the kernel over positions to ``A K A^T`` *exactly*
  at any width (square orthogonal value/output weights preserve inner products), with ``A`` computed in
  NumPy by ``kernels.attention.init_matrix``.
* Causal masking: with every parameter perturbed (queries included, so attention depends on the input),
  logits at a position never depend on later tokens, and without the mask they do.
* Whole networks at width 256: measured kernels (averaged over initializations) follow the predictions of
  ``kernels.sequence`` at every layer; naive softmax attention collapses the kernel to rank one, E-SPA
  does not.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dks_jax import nets
from dks_jax import sequence_diagnostics as sd
from conftest import dict_config
from dks_jax.kernels import attention as att
from dks_jax.kernels import graph as g
from dks_jax.kernels import sequence
from dks_jax.nets import summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 40


def _config(**fields):
    base = dict(model="transformer", depth=2, width=32, num_heads=4, mlp_ratio=2, attention="espa",
                activation="leaky_relu", method="TAT", c_val_0_target=0.3)
    base.update(fields)
    return dict_config(**base)


def _kernels(h):
    h = np.asarray(h, np.float64)
    return np.einsum("btd,bsd->bts", h, h) / h.shape[-1]


@pytest.mark.parametrize("fields", [
    dict(attention="softmax"), dict(attention="espa"), dict(attention="uspa"),
    dict(attention="value_skipinit", value_skip_alpha=0.6, value_skip_beta=0.8),
    dict(attention="espa", causal=False), dict(attention="softmax", causal=False),
])
def test_attention_layer_maps_the_kernel_exactly_at_finite_width(fields):
    seq_len = 8
    model = nets.build_model(_config(width=64, depth=1, **fields), VOCAB, (seq_len,))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (3, seq_len)), jnp.int32)
    params, state = model.init(jax.random.PRNGKey(1), tokens)
    (_, trace), _ = model.apply_with_trace(params, state, tokens)
    node = model.spec.layers[1]
    assert isinstance(node, g.Attention)
    a = att.init_matrix(node, seq_len)
    k_in, k_out = _kernels(trace[0]), _kernels(trace[1])
    np.testing.assert_allclose(k_out, a @ k_in @ a.T, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attention", ["softmax", "espa", "uspa", "value_skipinit"])
@pytest.mark.parametrize("causal", [True, False])
def test_causal_masking(attention, causal):
    seq_len = 10
    model = nets.build_model(_config(attention=attention, causal=causal, value_skip_beta=0.5), VOCAB,
                             (seq_len,))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (2, seq_len)), jnp.int32)
    params, state = model.init(jax.random.PRNGKey(0), tokens)
    # Perturb every parameter (zero queries included) so that attention depends on the input.
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    params = jax.tree_util.tree_unflatten(
        treedef, [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    logits, _ = model.apply_jit(params, state, None, tokens)
    for position in (3, 7):
        changed = tokens.at[:, position:].set((tokens[:, position:] + 1) % VOCAB)
        new, _ = model.apply_jit(params, state, None, changed)
        before = np.abs(np.asarray(new[:, :position] - logits[:, :position])).max()
        after = np.abs(np.asarray(new[:, position:] - logits[:, position:])).max()
        assert after > 1e-3  # the changed positions' own outputs move
        if causal:
            assert before == 0.0
        else:
            assert before > 1e-3


def test_value_skipinit_at_init_is_the_identity_and_queries_start_at_zero():
    model = nets.build_model(_config(attention="value_skipinit", depth=1, width=16), VOCAB, (6,))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (2, 6)), jnp.int32)
    params, state = model.init(jax.random.PRNGKey(0), tokens)
    assert float(params["attn_0"]["alpha"]) == 1.0 and float(params["attn_0"]["beta"]) == 0.0
    assert not np.any(np.asarray(params["attn_0/query"]["w"]))
    (_, trace), _ = model.apply_with_trace(params, state, tokens)
    np.testing.assert_allclose(_kernels(trace[1]), _kernels(trace[0]), rtol=1e-5, atol=1e-6)


def test_variants_build_with_the_expected_layers():
    for block, extra in (("norm_only", {}), ("skips_only", dict(shortcut_weight=0.7)),
                         ("pre_ln", dict(method="untransformed", activation="gelu"))):
        model = nets.build_model(_config(block=block, **extra), VOCAB, (5,))
        params, _ = model.init(jax.random.PRNGKey(0))
        names = set(params)
        assert ("final_norm" in names) == (block in ("norm_only", "pre_ln"))
        assert any(n.endswith("/norm") for n in names) == (block in ("norm_only", "pre_ln"))
        if block != "norm_only":
            assert "attn_0/residual/attention/value" in names and "mlp_0/residual/fc_in" in names
        logits, _ = model.apply_jit(params, {}, None, model.dummy_input(2))
        assert logits.shape == (2, 5, VOCAB) and np.all(np.isfinite(np.asarray(logits)))
        # The spec arithmetic of nets.summary counts exactly the parameters Haiku creates.
        assert summary.cost(model.spec, (5,)).params == model.num_params(params)
    pre_ln = nets.build_model(_config(block="pre_ln", method="untransformed",
                                      activation="gelu"), VOCAB, (5,))
    params, _ = pre_ln.init(jax.random.PRNGKey(0))
    assert np.any(np.asarray(params["attn_0/residual/attention/query"]["w"]))  # standard init: random queries
    with pytest.raises(ValueError, match=r"needs token sequences of shape \(T,\)"):
        nets.build_model(_config(), VOCAB, (4, 4, 1))


@pytest.mark.parametrize("fields", [
    dict(attention="espa"), dict(attention="uspa"), dict(attention="softmax"),
    dict(attention="value_skipinit", value_skip_beta=0.7),
])
def test_measured_kernels_follow_the_predictions_at_every_layer(fields):
    model = nets.build_model(_config(width=256, depth=3, **fields), VOCAB, (12,))
    tokens = sd.distinct_tokens(VOCAB, 12, 6, np.random.default_rng(0))
    reports = sd.compare(model, tokens, num_inits=6)
    assert len(reports) == len(model.spec.layers)
    for r in reports:
        assert np.max(r.c_err) < 0.06, (r.label, np.max(r.c_err))
        assert abs(np.mean(r.q_meas) / np.mean(r.q_pred) - 1) < 0.12, (r.label, r.q_meas, r.q_pred)
    # Agreement is not trivial: the first attention layer alone moves correlations between positions (0 at
    # the input) by several times the tolerance.
    assert np.max(np.abs(reports[1].c_pred - reports[0].c_pred)) > 0.2


def test_naive_attention_collapses_the_rank_and_espa_does_not():
    tokens = sd.distinct_tokens(VOCAB, 16, 4, np.random.default_rng(0))
    last = {}
    for attention in ("softmax", "espa"):
        model = nets.build_model(_config(width=128, depth=8, attention=attention, c_val_0_target=0.6),
                                 VOCAB, (16,))
        last[attention] = sd.compare(model, tokens, num_inits=2)[-2]  # the last hidden layer
    assert last["softmax"].collapsed_pred and last["softmax"].collapsed_meas
    assert last["softmax"].rank_meas["mean_corr"] > 0.999
    assert not (last["espa"].collapsed_pred or last["espa"].collapsed_meas)
    assert last["espa"].rank_meas["min_eig"] > 1e-4 and last["espa"].rank_pred["min_eig"] > 1e-4


@pytest.mark.slow
def test_diagnose_cli_on_a_transformer_config(tmp_path):
    config_file = tmp_path / "lm_test_config.py"
    config_file.write_text(textwrap.dedent("""
        from dks_jax import configlib

        def get_config(arg=None):
            c = configlib.base_config()
            c.model, c.depth, c.width, c.seq_len, c.dataset = "transformer", 3, 64, 16, "cpython_chars"
            c.transformer.update(dict(num_heads=4, mlp_ratio=2, attention=arg or "espa", block="vanilla"))
            c.activation, c.method, c.tat.c_val_0_target = "leaky_relu", "TAT", 0.4
            return c
    """))
    outputs = {}
    for attention, inputs in (("espa", "distinct"), ("softmax", "text")):
        result = subprocess.run([sys.executable, "-m", "dks_jax.diagnose", f"--config={config_file}:{attention}",
                                 "--num_inits=3", "--num_sequences=4", f"--sequence_inputs={inputs}"],
                                cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        outputs[attention] = result.stdout
        assert result.stdout.strip().splitlines()[-1].endswith("-> PASS")
    assert "distinct tokens (input kernel = identity)" in outputs["espa"]
    assert "no rank collapse at the last hidden layer" in outputs["espa"]
    assert "windows of 'cpython_chars'" in outputs["softmax"]
    assert "rank collapse at the last hidden layer (predicted and measured)" in outputs["softmax"]


def test_propagated_rescaling_keeps_unit_q_at_every_position_in_the_real_module():
    tokens = sd.distinct_tokens(VOCAB, 32, 4, np.random.default_rng(0))
    last_q = {}
    for mode in ("target", "propagated"):
        model = nets.build_model(_config(width=256, depth=4, c_val_0_target=0.6, spa_rescale=mode), VOCAB,
                                 (32,))
        reports = sd.compare(model, tokens, num_inits=4)
        for r in reports:
            assert np.max(r.c_err) < 0.06, (mode, r.label, np.max(r.c_err))
        last_q[mode] = reports[-2]  # last hidden layer
    # 'target': q grows along the sequence (predicted and measured); 'propagated': 1 at every position.
    assert last_q["target"].q_pred[-1] > 1.4 and last_q["target"].q_meas[-1] > 1.3
    np.testing.assert_allclose(last_q["propagated"].q_pred, 1.0, atol=1e-9)
    assert np.max(np.abs(last_q["propagated"].q_meas - 1.0)) < 0.15
    with pytest.raises(ValueError, match=r"config.transformer.spa_rescale='always' is invalid"):
        nets.build_model(_config(spa_rescale="always"), VOCAB, (8,))
