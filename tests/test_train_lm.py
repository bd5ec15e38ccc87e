"""The training loop on a language model: configs/lm.py:tiny trains on the corpus and reports bits per character.

The loop's text task is checked against independent computations: the evaluation covers every character
of the split but the first exactly once, and its bits per character equal the mean negative
log-likelihood in nats divided by ln 2 computed here from the model's own logits on a few windows.
"""

import json
import math

import jax
import numpy as np
import pytest

from conftest import load_config
from dks_jax import configlib
from dks_jax.data import paths, text
from dks_jax.train import loop, sweep, tasks

CORPUS = paths.resolve_data_dir() / text.CORPUS_FOLDER
pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus not found at {CORPUS}")


def test_tiny_lm_trains_and_reports_bits_per_character(tmp_path):
    config = load_config("lm.py:tiny", max_steps=40, log_every_steps=10,
                         **{"learning_rate": 3e-3, "schedule.warmup_epochs": 0.0})
    summary = loop.train_and_evaluate(config, tmp_path, progress=False)
    assert summary["status"] == "stopped" and summary["steps"] == 40
    for split in ("validation", "test"):
        # Every character but the first is a target once.
        n = len(text.load_cpython_chars(split))
        assert summary[f"{split}_examples"] == n - 1
        assert summary[f"{split}_bits_per_character"] == pytest.approx(summary[f"{split}_loss"] / math.log(2))
    # 40 Adam steps leave the uniform distribution (log2 97 = 6.6 bits) well behind (4.55 measured).
    assert summary["test_bits_per_character"] < 5.0
    assert not summary["at_chance"]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"] - 0.5


def test_text_task_loss_matches_a_direct_computation():
    config = load_config("lm.py:tiny")
    exp = loop.Experiment(config)
    assert isinstance(exp.task, tasks.TextTask) and exp.eval_splits == ["validation", "test"]
    ts = exp.init_state()
    batch = text.eval_batch(exp.datasets["test"], 0, global_batch_size=4, seq_len=config.seq_len)
    logits, _ = exp.model.transformed.apply(ts.params, ts.state, None, batch["tokens"], is_training=False)
    logits = np.asarray(logits, np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    nll = -np.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
    sums = np.asarray(exp.task.eval_sums(jax.numpy.asarray(logits, jax.numpy.float32),
                                          jax.tree_util.tree_map(jax.numpy.asarray, batch)))
    np.testing.assert_allclose(sums, [np.sum(nll * batch["mask"]), sums[1], batch["mask"].sum()], rtol=1e-5)
    metrics = exp.task.eval_metrics(sums)
    assert metrics["bits_per_character"] == pytest.approx(np.sum(nll) / nll.size / math.log(2), rel=1e-5)


def test_text_datasets_keep_their_own_validation_split():
    config = load_config("lm.py:tiny")
    with pytest.raises(configlib.ConfigError, match="ships its own validation split"):
        tasks.load_datasets(configlib.set_fields(config, {"validation_fraction": 0.1}))
    # A sweep over a text config selects on the corpus' validation file, holding nothing out of train.
    point = sweep.sweep_config(load_config("lm.py:tiny"), {"learning_rate": 1e-3})
    assert point.validation_fraction == 0.0


def test_eval_batch_size_changes_speed_not_results():
    """The evaluation sums are exact and masked: any eval batch size gives the same split metrics."""
    results = []
    for eval_batch_size in (48, 512):  # 48 leaves a padded last batch at the end of the split
        exp = loop.Experiment(load_config("lm.py:tiny", eval_batch_size=eval_batch_size))
        ts = exp.init_state()
        results.append(exp.evaluate(ts.params, ts.state, "validation"))
    assert results[0]["examples"] == results[1]["examples"] == len(text.load_cpython_chars("validation")) - 1
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-6)
    assert results[0]["accuracy"] == pytest.approx(results[1]["accuracy"], abs=1e-9)
