"""Exceptions raised by the data package when a dataset is absent or unreadable."""

from __future__ import annotations

from collections.abc import Iterable
import os

# Shown in every "not found" message so the fix is always one read away.
HOW_TO_PROVIDE = (
    "Provide the data by passing `data_dir=...`, by setting the environment variable "
    "DKS_JAX_DATA_DIR, or by placing it under <repo root>/../shared/data; TFDS-backed "
    "datasets (names starting with 'tfds_') read prepared TFDS data instead "
    "(see docs/data.md)."
)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files could not be found in any of the places searched."""

    def __init__(self, name: str, searched: Iterable[os.PathLike | str], hint: str = ""):
        """Builds the message from the dataset name and the paths that were tried.

        Args:
            name: Dataset name as given to the registry.
            searched: Every path (file or folder) that was looked at, in order.
            hint: Optional extra sentence, e.g. which file layout is expected.
        """
        self.name = name
        self.searched = [str(p) for p in searched]
        lines = [f"Could not find dataset '{name}'. Looked in:"]
        lines += [f"  - {p}" for p in self.searched] or ["  (nowhere)"]
        if hint:
            lines.append(hint)
        lines.append(HOW_TO_PROVIDE)
        super().__init__("\n".join(lines))


class ValidationFoldError(ValueError):
    """A validation fold asked for that the held-out size does not give (``dataset.split_holdout``)."""


class MalformedDatasetError(ValueError):
    """A dataset file exists but its content does not match the expected format."""
