"""Datasets and input pipelines for dks_jax.

Importing this package is cheap: it needs numpy only. PIL, scikit-learn,
TensorFlow Datasets and jax are imported by the functions that use them.

Typical use:

    from dks_jax import data
    train = data.get_dataset("cifar10", "train")
    batches = data.train_iterator(train, global_batch_size=128, seed=0,
                                  start_step=resume_step,
                                  augment=data.train_augmenter("cifar10"),
                                  normalization=data.default_normalization("cifar10"))
"""

# Loader modules register themselves on import.
from dks_jax.data import cifar10 as _cifar10
from dks_jax.data import digits as _digits
from dks_jax.data import mnist as _mnist
from dks_jax.data import synthetic as _synthetic
from dks_jax.data import text
from dks_jax.data import tfds_source as _tfds_source
from dks_jax.data.augment import Augmenter
from dks_jax.data.augment import Identity
from dks_jax.data.augment import PadCropFlip
from dks_jax.data.augment import RandomResizedCrop
from dks_jax.data.augment import ResizeCenterCrop
from dks_jax.data.cifar10 import CIFAR10_CLASSES
from dks_jax.data.cifar10 import parse_binary_batch
from dks_jax.data.cifar10 import read_binary_batches
from dks_jax.data.dataset import ArrayDataset
from dks_jax.data.dataset import Dataset
from dks_jax.data.dataset import SourceDataset
from dks_jax.data.errors import DatasetNotFoundError
from dks_jax.data.errors import MalformedDatasetError
from dks_jax.data.errors import ValidationFoldError
from dks_jax.data.idx import read_idx
from dks_jax.data.normalize import Normalization
from dks_jax.data.normalize import normalize_images
from dks_jax.data.paths import resolve_cache_dir
from dks_jax.data.paths import resolve_data_dir
from dks_jax.data.pipeline import Batch
from dks_jax.data.pipeline import BatchIterator
from dks_jax.data.pipeline import eval_batch
from dks_jax.data.pipeline import eval_iterator
from dks_jax.data.pipeline import num_eval_batches
from dks_jax.data.pipeline import num_train_examples
from dks_jax.data.pipeline import steps_per_epoch
from dks_jax.data.pipeline import train_batch
from dks_jax.data.pipeline import train_indices
from dks_jax.data.pipeline import train_iterator
from dks_jax.data.pln import per_location_normalization
from dks_jax.data.presets import default_normalization
from dks_jax.data.presets import eval_transform
from dks_jax.data.presets import train_augmenter
from dks_jax.data.registry import get_dataset
from dks_jax.data.registry import list_datasets, native_splits
from dks_jax.data.registry import register_dataset
from dks_jax.data.text import CharVocabulary
from dks_jax.data.text import TokenDataset
