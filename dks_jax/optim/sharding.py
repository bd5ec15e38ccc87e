"""Data-parallel layout: a 1-D device mesh with axis 'data'.

Parameters, optimizer state and function state are replicated; the leading
(batch) axis of every batch leaf is sharded over 'data'. One `jax.jit` with
these shardings is the only data-parallel code path (no pmap): XLA's GSPMD
partitioner inserts the cross-device reductions (gradient means, K-FAC factor
statistics), so the step computes exactly what the single-device step computes,
up to floating-point reduction order.

The mesh axis must be of type `AxisType.Auto`. `jax.make_mesh` defaults to
`Explicit` axes in jax 0.9, under which K-FAC's factor statistics
(an einsum contracting the sharded batch axis) fail with a ShardingTypeError;
`make_data_mesh` builds the right kind of mesh.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_data_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A 1-D mesh over `devices` (default: all) with an Auto axis named 'data'.

    Args:
        devices: Devices to use; defaults to `jax.devices()`.

    Returns:
        The mesh.
    """
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                         devices=devices)


def check_data_mesh(mesh: Mesh) -> None:
    """Raises ValueError unless `mesh` has an Auto-typed 'data' axis.

    Args:
        mesh: The mesh to check.
    """
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(f"mesh needs an axis named {DATA_AXIS!r}, got {mesh.axis_names}")
    axis_type = dict(zip(mesh.axis_names, mesh.axis_types))[DATA_AXIS]
    if axis_type != AxisType.Auto:
        raise ValueError(f"mesh axis {DATA_AXIS!r} has type {axis_type}; data parallelism here "
                         "relies on GSPMD and needs AxisType.Auto (use make_data_mesh)")


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that replicates an array on every device of `mesh`."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The sharding that splits an array's leading axis over 'data'."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf of `tree` replicated on `mesh` (a no-op where it already is).

    Args:
        tree: Pytree of arrays (params, optimizer state, function state).
        mesh: The data mesh.

    Returns:
        The placed pytree.
    """
    return jax.device_put(tree, replicated(mesh))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Places a (single-process, global) batch with its leading axis over 'data'.

    Args:
        batch: Pytree of arrays whose leading axes are the global batch size,
            which must be divisible by the number of devices in `mesh`.
        mesh: The data mesh.

    Returns:
        The placed pytree.
    """
    num = mesh.shape[DATA_AXIS]
    for leaf in jax.tree_util.tree_leaves(batch):
        if np.ndim(leaf) == 0 or np.shape(leaf)[0] % num:
            raise ValueError(f"batch leaf of shape {np.shape(leaf)} cannot be split over "
                             f"{num} devices")
    return jax.device_put(batch, batch_sharded(mesh))
