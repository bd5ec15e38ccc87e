"""Dataset registry: loaders register under a name and are fetched by it.

A loader is a function `loader(split, data_dir, **kwargs) -> Dataset` where
`split` is 'train' or 'test' and `data_dir` is whatever the caller passed (None
when unset). The 'validation' split is not a loader concern: `get_dataset`
carves it out of 'train' (see `dataset.split_holdout`), except for datasets
registered with `native_splits` (e.g. a text corpus shipped with its own
validation file), whose loader is asked for those splits directly.
"""

from __future__ import annotations

from collections.abc import Callable
import os
from typing import Any, TypeVar

from dks_jax.data import dataset as dataset_lib

Loader = Callable[..., dataset_lib.Dataset]
_LoaderT = TypeVar("_LoaderT", bound=Loader)

SPLITS = ("train", "validation", "test")

_LOADERS: dict[str, Loader] = {}
_NATIVE_SPLITS: dict[str, tuple[str, ...]] = {}


def register_dataset(name: str, *, native_splits: tuple[str, ...] | None = None
                     ) -> Callable[[_LoaderT], _LoaderT]:
    """Decorator that registers a loader under `name`.

    Args:
        name: Registry name; must be unused.
        native_splits: Splits the loader provides itself (e.g. ('train',
            'validation', 'test')); None for the default ('validation' is held
            out of 'train').

    Returns:
        A decorator returning the loader unchanged.
    """
    if native_splits is not None and not set(native_splits) <= set(SPLITS):
        raise ValueError(f"native_splits of '{name}' must be among {SPLITS}, got {native_splits}")

    def decorator(loader: _LoaderT) -> _LoaderT:
        if name in _LOADERS and _LOADERS[name] is not loader:
            raise ValueError(f"dataset '{name}' is already registered")
        _LOADERS[name] = loader
        if native_splits is not None:
            _NATIVE_SPLITS[name] = tuple(native_splits)
        return loader
    return decorator


def list_datasets() -> list[str]:
    """Returns the sorted names of all registered datasets."""
    return sorted(_LOADERS)


def native_splits(name: str) -> tuple[str, ...] | None:
    """The splits dataset ``name`` ships itself (None: 'validation' is held out of 'train')."""
    get_loader(name)  # unknown names fail with the list of known ones
    return _NATIVE_SPLITS.get(name)


def get_loader(name: str) -> Loader:
    """Looks up a registered loader.

    Args:
        name: Registry name.

    Returns:
        The loader function.

    Raises:
        KeyError: For unknown names; the message lists the known ones.
    """
    try:
        return _LOADERS[name]
    except KeyError:
        raise KeyError(f"unknown dataset '{name}'; known datasets: "
                       f"{', '.join(list_datasets())}") from None


def get_dataset(name: str, split: str = "train", *,
                data_dir: str | os.PathLike | None = None,
                validation_size: int | float = 0,
                validation_fold: int = 0,
                **loader_kwargs: Any) -> dataset_lib.Dataset:
    """Loads one split of a registered dataset.

    Args:
        name: Registry name, e.g. 'mnist', 'cifar10', 'tfds_imagenet2012'.
        split: 'train', 'validation' or 'test'.
        data_dir: Folder to read from (see `paths.resolve_data_dir`; for TFDS
            datasets it is TFDS's own data_dir).
        validation_size: Examples held out of 'train' as the 'validation' split:
            a count, or a fraction in [0, 1). With 0 (the default) 'train' is the
            whole train split and asking for 'validation' is an error.
        validation_fold: Which of the disjoint holdouts of that size (k-fold
            cross-validation; `dataset.split_holdout`).
        **loader_kwargs: Passed to the loader (e.g. `cache_dir` for cifar10,
            `num_examples` for synthetic).

    Returns:
        An ArrayDataset (or a SourceDataset for variable-size TFDS images, or
        a text.TokenDataset for 'cpython_chars').

    Raises:
        KeyError: Unknown dataset name.
        ValueError: Unknown split, or 'validation' with validation_size 0.
        DatasetNotFoundError: The data is missing.
        MalformedDatasetError: The data exists but cannot be parsed.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}'; expected one of {SPLITS}")
    loader = get_loader(name)
    if name in _NATIVE_SPLITS:
        if split not in _NATIVE_SPLITS[name]:
            raise ValueError(f"'{name}' has no split '{split}'; valid: {_NATIVE_SPLITS[name]}")
        if validation_size:
            raise ValueError(f"'{name}' ships its own validation split: validation_size must be 0, got "
                             f"{validation_size!r}")
        return loader(split, data_dir, **loader_kwargs)
    if split == "test":
        return loader("test", data_dir, **loader_kwargs)
    if split == "validation" and validation_size == 0:
        raise ValueError(f"split='validation' of '{name}' needs validation_size > 0 "
                         "(a count or fraction held out of the train split)")
    train, held_out = dataset_lib.split_holdout(loader("train", data_dir, **loader_kwargs),
                                                validation_size, validation_fold)
    return held_out if split == "validation" else train
