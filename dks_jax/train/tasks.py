"""What a run learns: image classification or next-character prediction, behind one interface.

The training loop is the same for both; a task supplies the batches (a pure function of ``(seed, step)``
for training, ordered masked passes for evaluation), the model's input, the training loss and the
evaluation sums. ``make_task`` picks the task from the dataset: text corpora (``data.text.TokenDataset``)
are language modelling, everything else is classification.

* Classification: batches ``{"image", "label"}``; an epoch is one pass over the training examples;
  evaluation reports the mean cross-entropy ``loss`` and ``accuracy``.
* Language modelling: batches ``{"tokens", "targets"}`` of ``config.seq_len`` characters; an epoch is
  ``len(train tokens) / (batch_size * seq_len)`` steps (as many characters as the split holds);
  evaluation reports ``loss`` in nats per character, per-character ``accuracy`` and
  ``bits_per_character``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from dks_jax import configlib
from dks_jax import data as data_lib
from dks_jax.data import text as text_lib
from dks_jax.optim import lm_losses, losses

Batch = dict[str, np.ndarray]
TransferFn = Callable[[Batch], Any]


class _Task:
    """What both tasks hold: the config, the loaded splits and this host's place among the hosts."""

    input_key = ""

    def __init__(self, config: Any, datasets: dict[str, Any], process_index: int, process_count: int):
        self.config, self.datasets = config, datasets
        self.process_index, self.process_count = process_index, process_count
        self.train_ds = datasets["train"]
        self.num_classes = int(self.train_ds.num_classes)

    def optimizer_kwargs(self, name: str) -> dict[str, Any]:
        """Keyword arguments the task adds to the optimizer's own config section."""
        del name
        return {}


class ImageTask(_Task):
    """Classification of images (or any feature arrays) into ``num_classes`` labels."""

    input_key = "image"

    def __init__(self, config: Any, datasets: dict[str, Any], process_index: int, process_count: int):
        super().__init__(config, datasets, process_index, process_count)
        image_size = int(config.image_size)
        self.augment = data_lib.train_augmenter(config.dataset, image_size) if config.augment else None
        self.eval_transform = data_lib.eval_transform(config.dataset, image_size)
        # PLN, when asked for, is the model's first layer (so diagnostics see it too), not the pipeline's.
        self.normalization = data_lib.default_normalization(
            config.dataset, standardize=config.normalize == "meanstd")

    def steps_per_epoch(self, batch_size: int) -> int:
        return data_lib.steps_per_epoch(len(self.train_ds), batch_size)

    def example(self, batch_size: int) -> Batch:
        """This host's part of training batch 0 (fixes the input shape)."""
        return data_lib.train_batch(
            self.train_ds, 0, global_batch_size=batch_size, seed=int(self.config.seed),
            process_index=self.process_index, process_count=self.process_count, augment=self.augment,
            normalization=self.normalization)

    def stream(self, batch_size: int, seed: int, start_step: int, num_steps: int,
               transfer_fn: TransferFn) -> Iterator[Any]:
        return data_lib.train_iterator(
            self.train_ds, global_batch_size=batch_size, seed=seed, start_step=start_step,
            num_steps=num_steps, process_index=self.process_index, process_count=self.process_count,
            augment=self.augment, normalization=self.normalization, transfer_fn=transfer_fn)

    def eval_iterator(self, split: str, batch_size: int, transfer_fn: TransferFn) -> Iterator[Any]:
        return data_lib.eval_iterator(
            self.datasets[split], global_batch_size=batch_size, process_index=self.process_index,
            process_count=self.process_count, transform=self.eval_transform,
            normalization=self.normalization, transfer_fn=transfer_fn)

    def loss(self, logits: jax.Array, batch: dict[str, jax.Array], register_for_kfac: bool
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
        loss = losses.classification_loss(
            logits, batch["label"], label_smoothing=float(self.config.label_smoothing),
            num_classes=self.num_classes, register_for_kfac=register_for_kfac)
        return loss, {"accuracy": losses.accuracy(logits, batch["label"])}

    def eval_sums(self, logits: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
        """``[summed loss, correct predictions, examples]`` over the unmasked rows of a batch."""
        mask = batch["mask"]
        nll = losses.cross_entropy_per_example(logits, jax.nn.one_hot(batch["label"], self.num_classes))
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        return jnp.stack([jnp.sum(nll * mask), jnp.sum(correct * mask), jnp.sum(mask)])

    @staticmethod
    def eval_metrics(totals: np.ndarray) -> dict[str, float]:
        return {"loss": float(totals[0] / totals[2]), "accuracy": float(totals[1] / totals[2]),
                "examples": int(totals[2])}


class TextTask(_Task):
    """Next-character prediction on a ``TokenDataset`` with windows of ``config.seq_len`` characters."""

    input_key = "tokens"

    def __init__(self, config: Any, datasets: dict[str, Any], process_index: int, process_count: int):
        super().__init__(config, datasets, process_index, process_count)
        self.seq_len = int(config.seq_len)
        if float(config.label_smoothing):
            raise configlib.ConfigError(f"config.label_smoothing={config.label_smoothing!r}: language "
                                        "models report likelihoods (bits per character); use 0.")

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(len(self.train_ds) // (batch_size * self.seq_len), 1)

    def example(self, batch_size: int) -> Batch:
        return text_lib.train_batch(self.train_ds, 0, global_batch_size=batch_size, seq_len=self.seq_len,
                                    seed=int(self.config.seed), process_index=self.process_index,
                                    process_count=self.process_count)

    def stream(self, batch_size: int, seed: int, start_step: int, num_steps: int,
               transfer_fn: TransferFn) -> Iterator[Any]:
        return text_lib.train_iterator(
            self.train_ds, global_batch_size=batch_size, seq_len=self.seq_len, seed=seed,
            start_step=start_step, num_steps=num_steps, process_index=self.process_index,
            process_count=self.process_count, transfer_fn=transfer_fn)

    def eval_iterator(self, split: str, batch_size: int, transfer_fn: TransferFn) -> Iterator[Any]:
        return text_lib.eval_iterator(
            self.datasets[split], global_batch_size=batch_size, seq_len=self.seq_len,
            process_index=self.process_index, process_count=self.process_count, transfer_fn=transfer_fn)

    def loss(self, logits: jax.Array, batch: dict[str, jax.Array], register_for_kfac: bool
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
        loss = lm_losses.lm_loss(logits, batch["targets"], register_for_kfac=register_for_kfac)
        return loss, {"accuracy": lm_losses.token_accuracy(logits, batch["targets"])}

    def eval_sums(self, logits: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
        sums = lm_losses.lm_eval_sums(logits, batch["targets"], batch["mask"])
        return jnp.stack([sums["nll_sum"], sums["correct"], sums["count"]])

    @staticmethod
    def eval_metrics(totals: np.ndarray) -> dict[str, float]:
        return {**ImageTask.eval_metrics(totals),
                "bits_per_character": lm_losses.bits_per_character(totals[0], totals[2])}

    def optimizer_kwargs(self, name: str) -> dict[str, Any]:
        # K-FAC normalises its curvature by the rows its loss sees: one per character.
        if name == "kfac":
            return {"extra_kwargs": {"batch_size_extractor": lm_losses.kfac_batch_size}}
        return {}


def has_native_validation(dataset: str) -> bool:
    """Whether ``dataset`` ships its own validation split (nothing is held out of its train split)."""
    return "validation" in (data_lib.native_splits(dataset) or ())


def load_datasets(config: Any) -> dict[str, Any]:
    """The train split and the evaluation splits: validation (held out or native) when there is one, test.

    Raises:
      configlib.ConfigError: ``validation_fraction`` set for a dataset with its own validation split.
    """
    data_dir = config.data_dir or None
    val, fold = float(config.validation_fraction), int(config.validation_fold)
    native = has_native_validation(config.dataset)
    if native and val:
        raise configlib.ConfigError(
            f"config.validation_fraction={val:g}: {config.dataset!r} ships its own validation split "
            "(nothing is held out of its train split); set it to 0.")
    if fold and not val:
        raise configlib.ConfigError(
            f"config.validation_fold={fold} needs a held-out validation split: set "
            "config.validation_fraction (e.g. 0.2 for 5 folds, 0..4).")
    held_out = dict(validation_size=val, validation_fold=fold) if val else {}
    try:
        datasets = {"train": data_lib.get_dataset(config.dataset, "train", data_dir=data_dir, **held_out)}
    except data_lib.ValidationFoldError as err:
        raise configlib.ConfigError(f"config.validation_fold={fold} with config.validation_fraction="
                                    f"{val:g}: {err}.") from err
    # Periodic evaluations use the validation split when there is one (so nothing is ever chosen on the
    # test split); the final evaluation covers every split.
    for split in (["validation"] if val > 0 or native else []) + ["test"]:
        datasets[split] = data_lib.get_dataset(config.dataset, split, data_dir=data_dir, **held_out)
    return datasets


def make_task(config: Any, process_index: int = 0, process_count: int = 1) -> ImageTask | TextTask:
    """The task of ``config.dataset`` with its splits loaded."""
    datasets = load_datasets(config)
    cls = TextTask if isinstance(datasets["train"], text_lib.TokenDataset) else ImageTask
    return cls(config, datasets, process_index, process_count)
