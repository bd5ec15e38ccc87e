"""experiments.lm_tables: the transformer depth table trains real rows and computes its claims."""

from __future__ import annotations

import dataclasses

import pytest

from dks_jax.data import paths
from experiments import lm_tables, tables
from experiments import training_tables as tt


def test_steps_to_reach_and_target_on_a_known_curve():
    # A linear loss is its own centred 3-point mean: the standard curve 1 - s/400 gives the target at the
    # first log at 20% of a 200-step budget (step 40, loss 0.9); a curve twice as slow (1 - s/800)
    # reaches it at step 80, one that never gets there gives None.
    standard = [(s, 1.0 - s / 400) for s in range(10, 201, 10)]
    step, value = lm_tables.target_loss(standard, budget=200)
    assert step == 40 and value == pytest.approx(0.9)
    assert lm_tables.steps_to_reach(standard, value) == 40
    assert lm_tables.steps_to_reach([(s, 1.0 - s / 800) for s in range(10, 201, 10)], value) == 80
    assert lm_tables.steps_to_reach([(s, 0.95) for s in range(10, 201, 10)], value) is None
    assert lm_tables.train_curve("/nonexistent") == []


def test_train_curve_skips_torn_lines_and_evals(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"kind": "train", "step": 10, "loss": 3.0}\n{"kind": "eval", "step": 10, "loss": 9.0}\n'
        '{"kind": "train", "step": 20, "loss": 2.0}\n{"kind": "tra', encoding="utf-8")
    assert lm_tables.train_curve(str(tmp_path)) == [(10, 3.0), (20, 2.0)]


def test_registered_and_built_from_the_lm_config():
    assert "lm_depth" in [spec.name for spec in tables.list_tables()]
    c = lm_tables.quick_protocol().config_fn(8, lm_tables.VARIANTS[2], "adam")
    assert (c.depth, c.width, c.seq_len, c.transformer.block, c.transformer.attention) == (8, 64, 64, "vanilla",
                                                                                             "espa")
    assert c.method == "TAT" and c.activation == "leaky_relu"
    standard = lm_tables.quick_protocol().config_fn(8, lm_tables.STANDARD, "adam")
    assert standard.transformer.block == "pre_ln" and standard.method == "untransformed"


@pytest.mark.slow
def test_tiny_lm_table_trains_rows_and_reports_claims(tmp_path):
    if not (paths.resolve_data_dir() / "cpython_stdlib").exists():
        pytest.skip("../shared/data/cpython_stdlib is absent")
    protocol = dataclasses.replace(
        lm_tables.quick_protocol(), depths=(3,), seeds=(0,),
        learning_rates={("adam", "vanilla"): (3e-3,), ("adam", "standard"): (3e-3,)},
        config_fn=lm_tables._config_fn(width=16, seq_len=16, batch_size=8, steps=30),  # pylint: disable=protected-access
        description="test budget")
    result = lm_tables.depth_table("tiny_lm", tmp_path, protocol, log=lambda *_: None)
    rows = result.data["rows"]
    assert len(rows) == len(lm_tables.VARIANTS)
    for row in rows:
        mean, _, n = row["test_bits_per_character"]
        # 30 Adam steps take every variant well below the uniform code over the ~100-character
        # vocabulary (6.6 bits) but nowhere near a trained model (~2 bits).
        assert n == 1 and 2.5 < mean < 6.6, row
    # The standard row reaches its own target, at the step the target was taken from.
    for depth in (3,):
        step, _ = result.data["targets"][str(depth)]
        standard = next(r for r in rows if r["variant"] == lm_tables.STANDARD.label and r["depth"] == depth)
        assert standard["steps_to_target"] == step
    assert "naive vanilla minus E-SPA" in result.markdown and (tmp_path / "tiny_lm_bits.png").exists()
