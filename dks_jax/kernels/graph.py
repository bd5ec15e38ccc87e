"""Layer specifications: the single description of a network's architecture.

The same tree of frozen dataclasses is read twice: ``dks_jax.nets`` builds the Haiku module from it, and
this module reads it as a *kernel graph*, propagating a scalar (a C value, a slope, a curvature) through
it to give the network's maps and its subnetwork-maximizing function ``M(x, r)``. Change the layout and
both change; nobody writes ``M`` by hand.

Kernel semantics (infinite width, orthogonal or Delta-orthogonal weights, inputs of unit q):

* ``Act`` (a nonlinear layer) applies the local map ``r``;
* ``Dense``, ``Conv``, ``Pool``, ``GlobalAvgPool``, ``Flatten``, ``Dropout`` and ``PerLocationNorm`` are
  identities (pooling is an approximation: it is exact for the C map of inputs that are constant
  across the pooling window, and the DKS/TAT papers treat it the same way);
* ``PerLocationNorm`` is data preprocessing: the kernel graph starts at its *output*, whose q is 1 by
  construction. The map from raw inputs, ``c -> (C c + 1) / (C + 1)`` with a homogeneous coordinate
  appended to C channels, depends on the data's channel count and is not part of the network the
  solver shapes (as in the papers); ``pln_input_c_map`` gives it for tools that start from raw inputs;
* ``WeightedSum`` with weights ``w_i`` (``sum w_i^2 = 1``) gives ``sum_i w_i^2 x_i``;
* ``PreActResidual`` is a ResNet-V2 block: ``h = pre(x)``, output
  ``w * shortcut + sqrt(1 - w^2) * branch(h)``, the shortcut being ``x`` or ``projection(h)``;
* ``BatchNorm`` and unnormalized sums (``weights=None``) have no kernel map here: the standard ResNet
  baseline is built from this spec too, but DKS/TAT cannot be solved for it (a clear error says so).

This module is pure Python: no JAX, no Haiku.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterator, Union

ScalarMap = Callable[[float], float]


class KernelGraphError(ValueError):
    """The layer specification has no kernel map (normalization layers, unnormalized sums)."""


@dataclasses.dataclass(frozen=True)
class Dense:
    """A fully connected layer."""

    features: int
    with_bias: bool = True
    name: str | None = None


@dataclasses.dataclass(frozen=True)
class Conv:
    """A 2D convolution (``SAME`` padding, NHWC)."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    with_bias: bool = True
    name: str | None = None


@dataclasses.dataclass(frozen=True)
class Act:
    """A nonlinear layer: the network's (transformed) activation function."""

    name: str | None = None


@dataclasses.dataclass(frozen=True)
class Pool:
    """Spatial max or average pooling (``SAME`` padding)."""

    kind: str = "max"
    window: int = 3
    stride: int = 2


@dataclasses.dataclass(frozen=True)
class GlobalAvgPool:
    """Mean over the spatial axes."""


@dataclasses.dataclass(frozen=True)
class Flatten:
    """Flattens all but the batch axis."""


@dataclasses.dataclass(frozen=True)
class Dropout:
    """Dropout (training only); identity at initialization."""

    rate: float


@dataclasses.dataclass(frozen=True)
class PerLocationNorm:
    """Per-location normalization of the input (optionally with a homogeneous coordinate)."""

    homog_mode: str = "none"


def pln_input_c_map(node: PerLocationNorm, c: float, channels: int) -> float:
    """The C value after per-location normalization of inputs with ``channels`` channels and correlation c.

    For raw locations of unit mean square (what the diagnostics feed), normalization alone keeps c, and a
    homogeneous coordinate ('const' or 'avg_q', both then equal to 1) adds 1 to the inner product and one
    channel to the count.

    Args:
      node: The PLN layer.
      c: Correlation of the raw input pair (per location).
      channels: Number of channels of the raw input.

    Returns:
      The correlation at PLN's output.
    """
    if node.homog_mode in ("none", "off"):
        return c
    return (channels * c + 1.0) / (channels + 1.0)


@dataclasses.dataclass(frozen=True)
class BatchNorm:
    """Batch normalization (baselines only)."""

    name: str | None = None


@dataclasses.dataclass(frozen=True)
class Sequential:
    """Layers applied in order."""

    layers: tuple["Node", ...]
    name: str | None = None


@dataclasses.dataclass(frozen=True)
class WeightedSum:
    """``sum_i weights[i] * branches[i](x)``; ``weights=None`` is a plain, unnormalized sum."""

    branches: tuple["Node", ...]
    weights: tuple[float, ...] | None
    name: str | None = None


@dataclasses.dataclass(frozen=True)
class PreActResidual:
    """A pre-activation (ResNet-V2) residual block.

    ``h = pre(x)``; output ``w * s + sqrt(1 - w^2) * branch(h)`` where ``s`` is ``projection(h)`` when a
    projection is given and ``x`` otherwise. ``shortcut_weight=None`` means the standard unweighted sum
    ``s + branch(h)`` (the normalized ResNet baseline).
    """

    pre: "Node"
    branch: "Node"
    projection: "Node | None"
    shortcut_weight: float | None
    name: str | None = None


Node = Union[Dense, Conv, Act, Pool, GlobalAvgPool, Flatten, Dropout, PerLocationNorm, BatchNorm,
             Sequential, WeightedSum, PreActResidual]

_IDENTITY_NODES = (Dense, Conv, Pool, GlobalAvgPool, Flatten, Dropout, PerLocationNorm)


def validate(node: Node) -> None:
    """Checks weights of every sum; raises ``ValueError`` naming the offending node."""
    for sub in iter_nodes(node):
        if isinstance(sub, WeightedSum) and sub.weights is not None:
            if len(sub.weights) != len(sub.branches):
                raise ValueError(f"WeightedSum {sub.name!r}: {len(sub.weights)} weights for "
                                 f"{len(sub.branches)} branches.")
            total = sum(w * w for w in sub.weights)
            if not math.isclose(total, 1.0, rel_tol=1e-9, abs_tol=1e-12):
                raise ValueError(f"WeightedSum {sub.name!r}: squared weights sum to {total}, "
                                 "they must sum to 1 for the kernel to be preserved.")
        if isinstance(sub, PreActResidual) and sub.shortcut_weight is not None:
            if not 0.0 <= sub.shortcut_weight <= 1.0:
                raise ValueError(f"PreActResidual {sub.name!r}: shortcut_weight must lie in [0, 1], "
                                 f"got {sub.shortcut_weight}.")


def iter_nodes(node: Node) -> Iterator[Node]:
    """Yields ``node`` and every node below it, depth first."""
    yield node
    if isinstance(node, Sequential):
        for layer in node.layers:
            yield from iter_nodes(layer)
    elif isinstance(node, WeightedSum):
        for branch in node.branches:
            yield from iter_nodes(branch)
    elif isinstance(node, PreActResidual):
        yield from iter_nodes(node.pre)
        yield from iter_nodes(node.branch)
        if node.projection is not None:
            yield from iter_nodes(node.projection)


def propagate(node: Node, x, r: ScalarMap):
    """Runs the kernel graph on ``x`` with the local map ``r`` at every nonlinear layer.

    ``x`` may be a float or an array (elementwise); ``r`` must accept the same.

    Raises:
      KernelGraphError: At a ``BatchNorm`` or an unnormalized sum.
    """
    if isinstance(node, Act):
        return r(x)
    if isinstance(node, _IDENTITY_NODES):
        return x
    if isinstance(node, Sequential):
        for layer in node.layers:
            x = propagate(layer, x, r)
        return x
    if isinstance(node, WeightedSum):
        if node.weights is None:
            raise KernelGraphError(f"WeightedSum {node.name!r} is an unnormalized sum: it has no kernel "
                                   "map. Give it weights whose squares sum to 1 to use DKS/TAT.")
        return sum(w * w * propagate(b, x, r) for w, b in zip(node.weights, node.branches))
    if isinstance(node, PreActResidual):
        if node.shortcut_weight is None:
            raise KernelGraphError(f"PreActResidual {node.name!r} has an unweighted shortcut (standard "
                                   "ResNet): set shortcut_weight in [0, 1] to use DKS/TAT.")
        h = propagate(node.pre, x, r)
        res = propagate(node.branch, h, r)
        w2 = node.shortcut_weight**2
        if w2 == 0.0:
            return res
        shortcut = x if node.projection is None else propagate(node.projection, h, r)
        return w2 * shortcut + (1.0 - w2) * res
    if isinstance(node, BatchNorm):
        raise KernelGraphError("BatchNorm layers have no kernel map: DKS/TAT apply to networks without "
                               "normalization layers only.")
    raise TypeError(f"Unknown layer specification node: {node!r}")


def subnetworks(node: Node) -> tuple[Node, ...]:
    """The subnetworks whose kernels DKS/TAT must also control, besides the whole network.

    Every branch of a sum defines a subnetwork (for a ResNet, a residual branch with its pre-activation);
    they are deduplicated, since identical blocks give identical values.
    """
    found: dict[Node, None] = {}
    for sub in iter_nodes(node):
        if isinstance(sub, WeightedSum):
            for w, branch in zip(sub.weights or (), sub.branches):
                if w != 0.0:
                    found.setdefault(branch, None)
        elif isinstance(sub, PreActResidual) and sub.shortcut_weight not in (None, 1.0):
            found.setdefault(Sequential((sub.pre, sub.branch)), None)
    return tuple(found)


def subnet_max_func(node: Node) -> Callable[[float, ScalarMap], float]:
    """The subnetwork-maximizing function ``M(x, r)`` of the network described by ``node``.

    ``M(x, r)`` runs the kernel graph on ``x`` (applying ``r`` at every nonlinear layer and the weighted
    sum rule at every sum) and returns the maximum over the network and its subnetworks. Its uses:
    maximal C'(1) is ``M(1, y -> s * y)``, maximal C''(1) is ``M(0, y -> k + y)`` and the maximal C(0) of a
    Leaky ReLU network is ``M(0, C_leaky_relu)``.

    Args:
      node: The network's layer specification.

    Returns:
      ``M`` as a Python function of a float and a scalar map.
    """
    validate(node)
    programs = [compile_graph(node)] + [compile_graph(sub) for sub in subnetworks(node)]

    def m(x: float, r: ScalarMap) -> float:
        return max(program(x, r) for program in programs)

    return m


def compile_graph(node: Node) -> Callable[[float, ScalarMap], float]:
    """``propagate(node, x, r)`` as a function of ``(x, r)``, with the layer dispatch done once.

    The solvers' searches run a network's graph dozens of times; walking the dataclass tree (type
    checks at every layer) each time costs more than the local maps themselves. Errors (batch
    normalization, unnormalized sums) are raised when the function is called, as ``propagate`` does.
    """
    if isinstance(node, Act):
        return lambda x, r: r(x)
    if isinstance(node, _IDENTITY_NODES):
        return lambda x, r: x
    if isinstance(node, Sequential):
        steps = [compile_graph(layer) for layer in node.layers
                 if not isinstance(layer, _IDENTITY_NODES)]
        if all(isinstance(layer, Act) for layer in node.layers if not isinstance(layer, _IDENTITY_NODES)):
            depth = len(steps)  # a plain chain: r applied depth times

            def chain(x, r):
                for _ in range(depth):
                    x = r(x)
                return x

            return chain

        def sequence(x, r):
            for step in steps:
                x = step(x, r)
            return x

        return sequence
    if isinstance(node, (WeightedSum, PreActResidual, BatchNorm)):
        try:
            _check_has_kernel_map(node)
        except KernelGraphError as err:
            message = str(err)

            def fail(x, r):
                raise KernelGraphError(message)

            return fail
    if isinstance(node, WeightedSum):
        parts = [(w * w, compile_graph(b)) for w, b in zip(node.weights, node.branches)]
        return lambda x, r: sum(w2 * branch(x, r) for w2, branch in parts)
    if isinstance(node, PreActResidual):
        pre, branch = compile_graph(node.pre), compile_graph(node.branch)
        w2 = node.shortcut_weight**2
        projection = None if node.projection is None else compile_graph(node.projection)

        def residual(x, r):
            h = pre(x, r)
            res = branch(h, r)
            if w2 == 0.0:
                return res
            shortcut = x if projection is None else projection(h, r)
            return w2 * shortcut + (1.0 - w2) * res

        return residual
    raise TypeError(f"Unknown layer specification node: {node!r}")


def _check_has_kernel_map(node: Node) -> None:
    if isinstance(node, WeightedSum) and node.weights is None:
        raise KernelGraphError(f"WeightedSum {node.name!r} is an unnormalized sum: it has no kernel "
                               "map. Give it weights whose squares sum to 1 to use DKS/TAT.")
    if isinstance(node, PreActResidual) and node.shortcut_weight is None:
        raise KernelGraphError(f"PreActResidual {node.name!r} has an unweighted shortcut (standard "
                               "ResNet): set shortcut_weight in [0, 1] to use DKS/TAT.")
    if isinstance(node, BatchNorm):
        raise KernelGraphError("BatchNorm layers have no kernel map: DKS/TAT apply to networks without "
                               "normalization layers only.")


def trace(network: Sequential, x, r: ScalarMap) -> list:
    """The kernel value after each top-level layer of ``network`` (for layer-by-layer diagnostics).

    The Haiku builder in ``dks_jax.nets`` records its activations at the same points, so entry ``i`` here
    is the prediction for the ``i``-th recorded activation there.
    """
    values = []
    for layer in network.layers:
        x = propagate(layer, x, r)
        values.append(x)
    return values


def count_nonlinear_layers(node: Node) -> int:
    """Nonlinear layers on the longest path through the network (its "depth" for the kernel)."""
    return _longest(node)


def _longest(node: Node) -> int:
    if isinstance(node, Act):
        return 1
    if isinstance(node, Sequential):
        return sum(_longest(layer) for layer in node.layers)
    if isinstance(node, WeightedSum):
        return max(_longest(b) for b in node.branches)
    if isinstance(node, PreActResidual):
        return _longest(node.pre) + _longest(node.branch)
    return 0


def uses_batch_norm(node: Node) -> bool:
    """Whether any layer is a ``BatchNorm``."""
    return any(isinstance(sub, BatchNorm) for sub in iter_nodes(node))
