"""Character-level language-modelling data: the offline CPython standard-library corpus.

The corpus (``<data_dir>/cpython_stdlib/{train,valid,test}.txt.gz``, UTF-8 text split by source file; see the
data README) is read into one array of character ids per split:

* Vocabulary (``CharVocabulary``): id 0 is ``<unk>``, then every ASCII character that occurs in the *train*
  split, in code-point order (96 of them). Every other character (non-ASCII: 807 of 12.1M train characters,
  3 of 608K test characters) maps to ``<unk>``. One id per character, so per-token losses are per
  character: bits per character = summed negative log-likelihood (nats) / characters / ln 2.
* Training batches: ``B`` windows of ``T + 1`` consecutive ids at uniformly random start positions, a pure
  function of ``(seed, step)`` like the image pipeline (``np.random.default_rng([seed, 2, step])``); inputs
  are the first T ids, targets the last T. Host ``p`` of ``P`` gets rows ``[p B / P, (p + 1) B / P)``.
* Evaluation: the split cut into consecutive windows of ``T + 1`` ids overlapping by one, so every character
  except the first is a target exactly once (context restarts at each window). Batches are padded with
  ``mask`` 0 (rows past the end, and target positions past the end of the split).

Batches are dicts of numpy arrays: ``{"tokens": int32 [B/P, T], "targets": int32 [B/P, T]}`` for training,
plus ``"mask": float32 [B/P, T]`` for evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import itertools
import os
import pathlib
from typing import Any, Callable

import numpy as np

from dks_jax.data import errors
from dks_jax.data import paths
from dks_jax.data import pipeline
from dks_jax.data import registry

CORPUS_NAME = "cpython_chars"
CORPUS_FOLDER = "cpython_stdlib"
SPLIT_FILES = {"train": "train.txt.gz", "validation": "valid.txt.gz", "test": "test.txt.gz"}
UNKNOWN_ID = 0
_WINDOW_STREAM = 2  # the image pipeline uses streams 0 (shuffling) and 1 (augmentation)

Batch = dict[str, np.ndarray]
# The image pipeline's argument checks, shared so that both pipelines accept and refuse the same layouts.
_check_sharding = pipeline._check_sharding  # pylint: disable=protected-access
_check_seed = pipeline._check_seed  # pylint: disable=protected-access


@dataclasses.dataclass(frozen=True)
class CharVocabulary:
    """Character ids: 0 is ``<unk>``, ``i + 1`` is ``chars[i]``.

    Attributes:
      chars: The known characters (single ASCII characters, in code-point order).
    """

    chars: tuple[str, ...]

    def __post_init__(self):
        if any(len(c) != 1 or ord(c) >= 128 for c in self.chars):
            raise ValueError("CharVocabulary: chars must be single ASCII characters.")
        if list(self.chars) != sorted(set(self.chars)):
            raise ValueError("CharVocabulary: chars must be distinct and in code-point order.")

    @property
    def size(self) -> int:
        """Number of ids (the characters and ``<unk>``)."""
        return len(self.chars) + 1

    @functools.cached_property
    def _table(self) -> np.ndarray:
        table = np.full(128, UNKNOWN_ID, np.uint8)
        for i, c in enumerate(self.chars):
            table[ord(c)] = i + 1
        return table

    def encode(self, text: str) -> np.ndarray:
        """Ids of the characters of ``text`` (uint8; unknown characters are ``UNKNOWN_ID``)."""
        code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        return np.where(code_points < 128, self._table[np.minimum(code_points, 127)],
                        UNKNOWN_ID).astype(np.uint8)

    def decode(self, ids: Any, unknown: str = "\ufffd") -> str:
        """The text of ``ids`` (``<unk>`` as ``unknown``)."""
        lookup = (unknown,) + self.chars
        return "".join(lookup[int(i)] for i in np.asarray(ids).reshape(-1))


@dataclasses.dataclass(frozen=True, eq=False)
class TokenDataset:
    """One split of a tokenized text corpus.

    Attributes:
      tokens: uint8 ids ``[N]``.
      vocab: The vocabulary (``vocab.size`` logits).
      name: Registry name.
      split: 'train', 'validation' or 'test'.
    """

    tokens: np.ndarray
    vocab: CharVocabulary
    name: str = CORPUS_NAME
    split: str = "train"

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def num_classes(self) -> int:
        """Vocabulary size (the model's ``num_classes``)."""
        return self.vocab.size


def _split_path(data_dir: str | os.PathLike | None, split: str) -> pathlib.Path:
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown split {split!r} of {CORPUS_NAME!r}; expected one of {tuple(SPLIT_FILES)}")
    path = paths.resolve_data_dir(data_dir) / CORPUS_FOLDER / SPLIT_FILES[split]
    if not path.is_file():
        raise errors.DatasetNotFoundError(CORPUS_NAME, [path],
                                          hint=f"Expected {CORPUS_FOLDER}/{{train,valid,test}}.txt.gz.")
    return path


@functools.lru_cache(maxsize=8)
def _read_text(path: str, mtime_ns: int) -> str:
    del mtime_ns  # part of the cache key only
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise errors.MalformedDatasetError(f"{path} is not gzipped UTF-8 text: {e}") from e


def read_split_text(split: str, data_dir: str | os.PathLike | None = None) -> str:
    """The raw text of one split (cached per process)."""
    path = _split_path(data_dir, split)
    return _read_text(str(path), path.stat().st_mtime_ns)


def corpus_vocabulary(data_dir: str | os.PathLike | None = None) -> CharVocabulary:
    """``<unk>`` plus the ASCII characters of the train split."""
    return _vocabulary(read_split_text("train", data_dir))


@functools.lru_cache(maxsize=4)
def _vocabulary(text: str) -> CharVocabulary:
    code_points = np.unique(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32))
    return CharVocabulary(tuple(chr(c) for c in code_points if c < 128))


@registry.register_dataset(CORPUS_NAME, native_splits=tuple(SPLIT_FILES))
def load_cpython_chars(split: str, data_dir: str | os.PathLike | None = None) -> TokenDataset:
    """One split of the CPython standard-library corpus as character ids.

    Args:
      split: 'train', 'validation' or 'test'.
      data_dir: Folder holding ``cpython_stdlib/`` (see ``paths.resolve_data_dir``).

    Returns:
      The split.

    Raises:
      DatasetNotFoundError: The split's file is missing.
      MalformedDatasetError: It is not gzipped UTF-8 text.
    """
    vocab = corpus_vocabulary(data_dir)
    path = _split_path(data_dir, split)
    tokens = _encoded(str(path), path.stat().st_mtime_ns, vocab)
    return TokenDataset(tokens=tokens, vocab=vocab, name=CORPUS_NAME, split=split)


@functools.lru_cache(maxsize=8)
def _encoded(path: str, mtime_ns: int, vocab: CharVocabulary) -> np.ndarray:
    """The split's ids, read-only and cached (encoding the train split takes about a second)."""
    tokens = vocab.encode(_read_text(path, mtime_ns))
    tokens.flags.writeable = False
    return tokens


# ----------------------------------------------------------------------------------------------
# Batches.


def _check_window(dataset: TokenDataset, seq_len: int) -> None:
    if not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    if len(dataset) < seq_len + 1:
        raise ValueError(f"{dataset.name!r} {dataset.split} has {len(dataset)} tokens, fewer than one window "
                         f"of seq_len + 1 = {seq_len + 1}")


def train_batch(dataset: TokenDataset, step: int, *, global_batch_size: int, seq_len: int, seed: int,
                process_index: int = 0, process_count: int = 1) -> Batch:
    """This host's part of global training batch ``step``: random windows, a pure function of (seed, step).

    Args:
      dataset: Training split.
      step: Global step (>= 0).
      global_batch_size: Windows per global batch.
      seq_len: T.
      seed: Non-negative seed.
      process_index: This host's index.
      process_count: Number of hosts.

    Returns:
      ``{"tokens": int32 [B/P, T], "targets": int32 [B/P, T]}``, targets the next character of each token.
    """
    local = _check_sharding(global_batch_size, process_index, process_count)
    seed = _check_seed(seed)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    _check_window(dataset, seq_len)
    rng = np.random.default_rng([seed, _WINDOW_STREAM, int(step)])
    starts = rng.integers(0, len(dataset) - seq_len, size=global_batch_size)
    starts = starts[process_index * local:(process_index + 1) * local]
    windows = dataset.tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int32)
    return {"tokens": windows[:, :-1], "targets": windows[:, 1:]}


def num_eval_windows(num_tokens: int, seq_len: int) -> int:
    """Windows covering every token but the first as a target once: ``ceil((N - 1) / T)``."""
    return -(-(num_tokens - 1) // seq_len)


def num_eval_batches(dataset: TokenDataset, *, global_batch_size: int, seq_len: int) -> int:
    """Evaluation batches of ``global_batch_size`` windows covering the split once (the last padded)."""
    return -(-num_eval_windows(len(dataset), seq_len) // global_batch_size)


def eval_batch(dataset: TokenDataset, index: int, *, global_batch_size: int, seq_len: int,
               process_index: int = 0, process_count: int = 1) -> Batch:
    """This host's part of evaluation batch ``index`` (windows in order, padded with ``mask`` 0).

    Window ``k`` holds tokens ``[k T, k T + T]``: inputs ``[k T, k T + T)``, targets ``[k T + 1, k T + T]``.

    Returns:
      ``{"tokens", "targets": int32 [B/P, T], "mask": float32 [B/P, T]}``.
    """
    local = _check_sharding(global_batch_size, process_index, process_count)
    _check_window(dataset, seq_len)
    first = index * global_batch_size + process_index * local
    starts = (first + np.arange(local))[:, None] * seq_len + np.arange(seq_len + 1)
    valid = starts < len(dataset)
    windows = dataset.tokens[np.where(valid, starts, 0)].astype(np.int32)
    windows = np.where(valid, windows, 0)
    return {"tokens": windows[:, :-1], "targets": windows[:, 1:],
            "mask": valid[:, 1:].astype(np.float32)}


def train_iterator(dataset: TokenDataset, *, global_batch_size: int, seq_len: int, seed: int,
                   start_step: int = 0, num_steps: int | None = None, process_index: int = 0,
                   process_count: int = 1, prefetch: int = 2,
                   transfer_fn: Callable[[Batch], Any] | None = None) -> pipeline.BatchIterator:
    """Training batches for steps ``start_step, start_step + 1, ...`` with background prefetch.

    Resuming at step k reproduces an uninterrupted run (batches depend on (seed, step) only).
    """
    _check_sharding(global_batch_size, process_index, process_count)
    _check_seed(seed)
    _check_window(dataset, seq_len)
    make = functools.partial(train_batch, dataset, global_batch_size=global_batch_size, seq_len=seq_len,
                             seed=seed, process_index=process_index, process_count=process_count)
    steps = (itertools.count(start_step) if num_steps is None
             else range(start_step, start_step + num_steps))
    return pipeline.BatchIterator(make, steps, start_step, prefetch, transfer_fn)


def eval_iterator(dataset: TokenDataset, *, global_batch_size: int, seq_len: int, process_index: int = 0,
                  process_count: int = 1, prefetch: int = 2,
                  transfer_fn: Callable[[Batch], Any] | None = None) -> pipeline.BatchIterator:
    """One ordered, masked pass over ``dataset`` (``num_eval_batches`` batches)."""
    _check_sharding(global_batch_size, process_index, process_count)
    _check_window(dataset, seq_len)
    make = functools.partial(eval_batch, dataset, global_batch_size=global_batch_size, seq_len=seq_len,
                             process_index=process_index, process_count=process_count)
    steps = range(num_eval_batches(dataset, global_batch_size=global_batch_size, seq_len=seq_len))
    return pipeline.BatchIterator(make, steps, 0, prefetch, transfer_fn)
