"""The character-level corpus loader on the real offline corpus (../shared/data/cpython_stdlib).

Independent truth: the uncompressed md5s published in the data README, character counts done here with
plain Python, and the token stream itself (every batch row must be a contiguous slice of it; evaluation
must predict every character but the first exactly once).
"""

import hashlib

import numpy as np
import pytest

from dks_jax import data
from dks_jax.data import paths
from dks_jax.data import text

CORPUS = paths.resolve_data_dir() / text.CORPUS_FOLDER
pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus not found at {CORPUS}")

# From ../shared/data/README.md (md5 of the uncompressed files).
README_MD5 = {"validation": "5136ece444b97ac7f22ec9286cfa35a7", "test": "7c028f3ec35913453364defaec636ddc"}


@pytest.mark.parametrize("split", ["validation", "test"])
def test_split_text_is_the_published_file(split):
    raw = text.read_split_text(split).encode("utf-8")
    assert hashlib.md5(raw).hexdigest() == README_MD5[split]


def test_vocabulary_is_unk_plus_the_ascii_characters_of_train():
    train = text.read_split_text("train")
    expected = sorted({c for c in train if ord(c) < 128})
    vocab = text.corpus_vocabulary()
    assert list(vocab.chars) == expected and vocab.size == len(expected) + 1 == 97
    test = data.get_dataset("cpython_chars", "test")
    test_text = text.read_split_text("test")
    assert len(test) == len(test_text)  # one id per character
    assert int(np.sum(test.tokens == text.UNKNOWN_ID)) == sum(ord(c) >= 128 for c in test_text)
    ascii_start = test_text.index("# ==== Lib/")
    assert vocab.decode(test.tokens[ascii_start:ascii_start + 500]) == test_text[ascii_start:ascii_start + 500]
    assert vocab.decode(vocab.encode("aé\n")) == "a\ufffd\n"


def _is_slice(stream, row):
    candidates = np.flatnonzero(stream[:len(stream) - len(row) + 1] == row[0])
    return any(np.array_equal(stream[s:s + len(row)], row) for s in candidates)


def test_training_windows_are_deterministic_contiguous_and_sharded():
    ds = data.get_dataset("cpython_chars", "validation")
    kwargs = dict(global_batch_size=8, seq_len=32, seed=3)
    batch = text.train_batch(ds, 5, **kwargs)
    assert batch["tokens"].dtype == np.int32 and batch["tokens"].shape == (8, 32)
    np.testing.assert_array_equal(batch["tokens"][:, 1:], batch["targets"][:, :-1])
    for tokens, targets in zip(batch["tokens"], batch["targets"]):
        assert _is_slice(ds.tokens, np.concatenate([tokens, targets[-1:]]))
    again = text.train_batch(ds, 5, **kwargs)
    np.testing.assert_array_equal(batch["tokens"], again["tokens"])
    assert not np.array_equal(batch["tokens"], text.train_batch(ds, 6, **kwargs)["tokens"])
    halves = [text.train_batch(ds, 5, process_index=p, process_count=2, **kwargs) for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([h["tokens"] for h in halves]), batch["tokens"])
    with text.train_iterator(ds, start_step=5, num_steps=2, **kwargs) as it:
        np.testing.assert_array_equal(next(it)["targets"], batch["targets"])


def test_evaluation_predicts_every_character_but_the_first_exactly_once():
    ds = data.get_dataset("cpython_chars", "test")
    seq_len, batch_size = 128, 64
    n_batches = text.num_eval_batches(ds, global_batch_size=batch_size, seq_len=seq_len)
    targets = []
    with text.eval_iterator(ds, global_batch_size=batch_size, seq_len=seq_len) as it:
        for batch in it:
            np.testing.assert_array_equal(batch["tokens"][:, 1:], batch["targets"][:, :-1])
            targets.append(batch["targets"][batch["mask"] > 0])  # row-major: windows in order
    assert len(targets) == n_batches
    np.testing.assert_array_equal(np.concatenate(targets), ds.tokens[1:])
    # Sharding over two hosts splits each batch's rows.
    whole = text.eval_batch(ds, n_batches - 1, global_batch_size=batch_size, seq_len=seq_len)
    parts = [text.eval_batch(ds, n_batches - 1, global_batch_size=batch_size, seq_len=seq_len,
                             process_index=p, process_count=2) for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([p["mask"] for p in parts]), whole["mask"])


def test_registry_and_errors():
    assert "cpython_chars" in data.list_datasets()
    with pytest.raises(ValueError, match="ships its own validation split"):
        data.get_dataset("cpython_chars", "validation", validation_size=0.1)
    with pytest.raises(data.DatasetNotFoundError, match="cpython_stdlib/train.txt.gz"):
        data.get_dataset("cpython_chars", "train", data_dir="/nonexistent")
    ds = data.get_dataset("cpython_chars", "test")
    with pytest.raises(ValueError, match="seq_len must be a positive integer"):
        text.train_batch(ds, 0, global_batch_size=2, seq_len=0, seed=0)
    with pytest.raises(ValueError, match="not divisible by process_count"):
        text.train_batch(ds, 0, global_batch_size=3, seq_len=8, seed=0, process_count=2)
