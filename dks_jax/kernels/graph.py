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

Sequence layers (the transformers of ``layouts.transformer``): ``Embed`` (token and optional positional
embedding) is where the kernel graph starts, like ``PerLocationNorm``; ``LayerNorm`` rescales every position
to q = 1 and keeps correlations; ``Attention`` mixes positions. The scalar graph here tracks the correlation
of one position across two input sequences, and treats attention as the identity: exact for Value-SkipInit at
initialization (the attention matrix is then ``I``), and otherwise the approximation that the attention matrix
at initialization, which does not depend on the input (zero-initialized queries), mixes positions the same
way in both sequences. What attention does *across positions* (the kernel matrix over the T positions,
per-position q, rank collapse) is propagated exactly by ``dks_jax.kernels.sequence`` from the same nodes;
how much attention mixes positions is set by its own target (E-SPA / U-SPA), not by the activation.

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


POSITIONAL_MODES = ("none", "learned")
ATTENTION_KINDS = ("softmax", "espa", "uspa")


@dataclasses.dataclass(frozen=True)
class Embed:
    """Token embedding of int inputs ``[batch, T]`` into ``[batch, T, features]`` (the sequence input layer).

    Tables start with N(0, 1) entries, so every token has unit q and distinct tokens are uncorrelated (at
    infinite width). With ``positional='learned'`` a learned embedding of the position (also N(0, 1)) is
    added and the sum scaled by ``1 / sqrt(2)`` to keep q = 1. Like ``PerLocationNorm``, the kernel graph
    starts at its output (``dks_jax.kernels.sequence.input_kernel`` gives that kernel for given tokens).

    Attributes:
      vocab_size: Number of token ids.
      features: Embedding width.
      positional: 'none' (positions are told apart by causal masking and the attention biases) or
        'learned'.
    """

    vocab_size: int
    features: int
    positional: str = "none"
    name: str | None = None


@dataclasses.dataclass(frozen=True)
class LayerNorm:
    """Layer normalization over the feature axis (per position), with a learned scale and offset.

    Kernel map at initialization (scale 1, offset 0; features of zero mean at infinite width): every
    position is rescaled to q = 1, correlations are unchanged.
    """

    name: str | None = None


@dataclasses.dataclass(frozen=True)
class Attention:
    """Multi-head self-attention over the positions of ``[batch, T, features]`` inputs.

    ``out = W_o concat_h(A_h V_h)`` with ``V = x W_v`` and the attention matrix
    ``A = D softmax(Q K^T / sqrt(d_head) + B + mask)``. At initialization the queries are zero
    (``zero_query_init``), so ``A`` does not depend on the input and the layer maps the kernel matrix over
    positions to ``A Sigma A^T`` (orthogonal value and output weights). ``kind`` chooses ``A`` at
    initialization (see ``dks_jax.kernels.attention``):

    * 'softmax': no bias and ``D = I``: uniform attention over the visible positions (the naive vanilla
      transformer, whose kernel collapses to rank one with depth);
    * 'espa' (exponential signal preserving attention): ``A = L_out L_in^{-1}``, ``L`` the Cholesky factor
      (causal) or symmetric square root (non-causal) of ``Sigma(i, j) = exp(-gamma |i - j|)``, with
      ``gamma = param_in`` before and ``param_out`` after the layer (``inf`` is the identity kernel); the
      fixed bias ``B = log`` of ``A``'s row-normalized entries and the fixed location-dependent rescaling
      ``D`` = its row sums;
    * 'uspa' (uniform signal preserving attention): the same with ``Sigma = (1 - rho) I + rho 1 1^T`` and
      ``rho = param_in`` / ``param_out``.

    With ``value_skip = (alpha, beta)`` (Value-SkipInit) the attention matrix becomes ``alpha I + beta A``
    with trainable scalars ``alpha, beta`` initialized to these values.

    ``row_scale`` overrides ``D`` with explicit per-position factors (one per position of the sequence
    length the model is built for): ``dks_jax.kernels.sequence.rescale_attention`` sets them so that every
    position leaves the layer with q = 1 given the kernel predicted at its input.

    Attributes:
      num_heads: Heads (they divide the features).
      kind: One of ``ATTENTION_KINDS``.
      causal: Mask future positions.
      param_in: E-SPA gamma / U-SPA rho of the kernel this layer expects (unused for 'softmax').
      param_out: E-SPA gamma / U-SPA rho of the kernel it produces.
      value_skip: Initial ``(alpha, beta)`` of Value-SkipInit, or None.
      zero_query_init: Initialize the query weights at zero (needed for an input-independent attention
        matrix at initialization; the standard baseline uses random queries and has no kernel map).
      row_scale: Explicit location-dependent rescaling ``D`` (positive, one per position), or None for the
        construction's own (row sums of the SPA matrix; none for 'softmax').
    """

    num_heads: int
    kind: str = "softmax"
    causal: bool = True
    param_in: float = 0.0
    param_out: float = 0.0
    value_skip: tuple[float, float] | None = None
    zero_query_init: bool = True
    row_scale: tuple[float, ...] | None = None
    name: str | None = None


def _cached_tree_hash(node) -> int:
    """A composite node's hash, computed once: a ResNet-101's tree has ~700 nodes, and the solver's
    caches look networks up by value on every call."""
    value = node.__dict__.get("_hash")
    if value is None:
        value = hash((type(node).__name__,) + tuple(getattr(node, f.name) for f in dataclasses.fields(node)))
        object.__setattr__(node, "_hash", value)
    return value


def _state_without_hash(node) -> dict:
    # String hashes differ between processes: a pickled node must not carry its cached hash.
    return {k: v for k, v in node.__dict__.items() if k != "_hash"}


@dataclasses.dataclass(frozen=True)
class Sequential:
    """Layers applied in order."""

    layers: tuple["Node", ...]
    name: str | None = None

    __hash__ = _cached_tree_hash
    __getstate__ = _state_without_hash


@dataclasses.dataclass(frozen=True)
class WeightedSum:
    """``sum_i weights[i] * branches[i](x)``; ``weights=None`` is a plain, unnormalized sum."""

    branches: tuple["Node", ...]
    weights: tuple[float, ...] | None
    name: str | None = None

    __hash__ = _cached_tree_hash
    __getstate__ = _state_without_hash


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

    __hash__ = _cached_tree_hash
    __getstate__ = _state_without_hash


Node = Union[Dense, Conv, Act, Pool, GlobalAvgPool, Flatten, Dropout, PerLocationNorm, BatchNorm,
             Embed, LayerNorm, Attention, Sequential, WeightedSum, PreActResidual]

# Identities of the scalar (per-pair) graph; see the module docstring for the sequence layers.
_IDENTITY_NODES = (Dense, Conv, Pool, GlobalAvgPool, Flatten, Dropout, PerLocationNorm, Embed, LayerNorm,
                   Attention)


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
        if isinstance(sub, Embed):
            if sub.positional not in POSITIONAL_MODES:
                raise ValueError(f"Embed {sub.name!r}: positional must be one of {POSITIONAL_MODES}, got "
                                 f"{sub.positional!r}.")
            if sub.vocab_size < 1 or sub.features < 1:
                raise ValueError(f"Embed {sub.name!r}: vocab_size and features must be positive, got "
                                 f"{sub.vocab_size} and {sub.features}.")
        if isinstance(sub, Attention):
            _validate_attention(sub)


def _validate_attention(node: Attention) -> None:
    if node.kind not in ATTENTION_KINDS:
        raise ValueError(f"Attention {node.name!r}: kind must be one of {ATTENTION_KINDS}, got "
                         f"{node.kind!r}.")
    if not isinstance(node.num_heads, int) or node.num_heads < 1:
        raise ValueError(f"Attention {node.name!r}: num_heads must be a positive integer, got "
                         f"{node.num_heads!r}.")
    if node.kind == "espa" and not (node.param_in > 0 and node.param_out > 0):
        raise ValueError(f"Attention {node.name!r}: E-SPA decay rates (param_in, param_out) must be > 0 "
                         f"(inf for the identity kernel), got {node.param_in}, {node.param_out}.")
    if node.kind == "uspa" and not (0.0 <= node.param_in < 1.0 and 0.0 <= node.param_out < 1.0):
        raise ValueError(f"Attention {node.name!r}: U-SPA correlations (param_in, param_out) must lie in "
                         f"[0, 1), got {node.param_in}, {node.param_out}.")
    if node.row_scale is not None and not all(v > 0 for v in node.row_scale):
        raise ValueError(f"Attention {node.name!r}: row_scale must be positive, got {node.row_scale!r}.")
    if node.value_skip is not None and len(node.value_skip) != 2:
        raise ValueError(f"Attention {node.name!r}: value_skip must be (alpha, beta), got "
                         f"{node.value_skip!r}.")


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


def subnet_max_func(node: Node) -> "SubnetMax":
    """The subnetwork-maximizing function ``M(x, r)`` of the network described by ``node``.

    ``M(x, r)`` runs the kernel graph on ``x`` (applying ``r`` at every nonlinear layer and the weighted
    sum rule at every sum) and returns the maximum over the network and its subnetworks. Its uses:
    maximal C'(1) is ``M(1, y -> s * y)``, maximal C''(1) is ``M(0, y -> k + y)`` and the maximal C(0) of a
    Leaky ReLU network is ``M(0, C_leaky_relu)``.

    Args:
      node: The network's layer specification.

    Returns:
      ``M`` as a Python function of a float and a scalar map (a ``SubnetMax``, which also has ``M``'s
      closed forms for the solvers' linear searches).
    """
    validate(node)
    return SubnetMax([compile_graph(node)] + [compile_graph(sub) for sub in subnetworks(node)])


class SubnetMax:
    """``M(x, r)`` of one network (see ``subnet_max_func``), plus its closed form for linear searches.

    The DKS and TAT (smooth) network-level searches evaluate ``M`` dozens of times with a linear local
    map: ``r(y) = t y`` (maximal C'(1)) or ``r(y) = t + y`` (maximal C''(1)). Through a graph of such
    maps and weighted sums every program is a polynomial in ``t`` with non-negative coefficients, so
    ``linear(x, step)`` runs the graph once on polynomials and later evaluates them directly: a few
    microseconds instead of one Python call per layer. The polynomials hold no solved value (they are a
    property of the network, like the compiled programs), so they are kept with it.
    """

    def __init__(self, programs: list[Callable[[float, ScalarMap], float]]):
        self._programs = programs
        self._linear: dict[tuple[float, str], Callable[[float], float]] = {}

    def __call__(self, x: float, r: ScalarMap) -> float:
        return max(program(x, r) for program in self._programs)

    def linear(self, x: float, step: str) -> Callable[[float], float]:
        """``t -> M(x, y -> t * y)`` (``step="scale"``) or ``t -> M(x, y -> t + y)`` (``"shift"``).

        Equal to calling ``M`` up to rounding (the sums are ordered differently).
        """
        key = (x, step)
        if key not in self._linear:
            if step == "scale":
                r = lambda p: _Polynomial({e + 1: c for e, c in p.terms.items()})
            elif step == "shift":
                t = _Polynomial({1: 1.0})
                r = lambda p: p + t
            else:
                raise ValueError(f"step must be 'scale' or 'shift', not {step!r}.")
            polys = [program(_Polynomial({0: float(x)}), r) for program in self._programs]
            self._linear[key] = _max_of_polynomials(polys)
        return self._linear[key]


class _Polynomial:
    """A polynomial in one variable (exponent -> coefficient), closed under the kernel graph's operations:
    sums of polynomials and products with floats."""

    __slots__ = ("terms",)

    def __init__(self, terms: dict[int, float]):
        self.terms = terms

    def __add__(self, other):
        if isinstance(other, (int, float)):
            other = _Polynomial({0: float(other)} if other else {})
        terms = dict(self.terms)
        for e, c in other.terms.items():
            terms[e] = terms.get(e, 0.0) + c
        return _Polynomial(terms)

    __radd__ = __add__

    def __mul__(self, w: float):
        return _Polynomial({e: w * c for e, c in self.terms.items()} if w else {})

    __rmul__ = __mul__


def _max_of_polynomials(polys: list[_Polynomial]) -> Callable[[float], float]:
    """The maximum of the polynomials as a function of a float (``inf`` where one overflows, as running
    the graph gives)."""
    forms = [sorted((e, c) for e, c in p.terms.items() if c != 0.0) for p in polys]
    if max(len(form) for form in forms) > 16:  # residual networks: one term per path length
        import numpy as np  # pylint: disable=g-import-not-at-top

        arrays = [(np.array([e for e, _ in form], np.float64), np.array([c for _, c in form]))
                  for form in forms]

        def vectorized(t: float) -> float:
            with np.errstate(over="ignore"):
                return max(float(coefs @ np.power(t, exps)) for exps, coefs in arrays)

        return vectorized

    def value(form: list[tuple[int, float]], t: float) -> float:
        try:
            return sum(c * t**e for e, c in form)
        except OverflowError:  # float ** int raises where repeated products reach inf
            return math.inf

    return lambda t: max(value(form, t) for form in forms)


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


def is_sequence_model(node: Node) -> bool:
    """Whether the network takes token sequences (it has an ``Embed`` or ``Attention`` layer)."""
    return any(isinstance(sub, (Embed, Attention)) for sub in iter_nodes(node))
