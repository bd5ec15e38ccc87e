"""The one interpreter from layer specifications (``dks_jax.kernels.graph``) to Haiku computations.

The solver reads a layer specification as a kernel graph; this module reads the *same* tree and runs it
as a network. Nothing else in the project turns a specification into layers, so the network that is
trained and the network whose kernel the activation was solved for cannot drift apart.

Parameter names are a deterministic function of the specification, so checkpoints are stable:

* a node with a ``name`` keeps it (``stem_conv``, ``group_0_block_0``, ``logits``, ...);
* an unnamed node gets ``<kind>_<k>``, ``k`` counting the unnamed nodes of that kind among its siblings
  (``conv_0``, ``conv_1``, ``batch_norm_0``, ``seq_0``, ...), skipping names a sibling already holds;
* containers open a name scope: ``group_1_block_0/conv_2/w``; a ``PreActResidual`` names its parts
  ``pre``, ``branch`` and ``projection`` (unless they carry names), a ``WeightedSum`` its branches
  ``branch_<i>``.

Must be called inside ``hk.transform`` / ``hk.transform_with_state``.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Sequence

import haiku as hk
import jax
import jax.numpy as jnp

from dks_jax.data import pln
from dks_jax.kernels import graph as g
from dks_jax.nets import initializers
from dks_jax.nets import sequence_layers

Array = jax.Array
ActivationFn = Callable[[Array], Array]

DEFAULT_BN_DECAY = 0.9
_KIND_PREFIX = {g.Dense: "dense", g.Conv: "conv", g.BatchNorm: "batch_norm", g.Sequential: "seq",
                g.WeightedSum: "sum", g.PreActResidual: "block", g.Embed: "embed",
                g.LayerNorm: "layer_norm", g.Attention: "attention"}


def child_names(nodes: Sequence[g.Node], roles: Sequence[str | None] | None = None) -> list[str | None]:
    """Deterministic, unique module / scope names for sibling nodes (None for parameter-free nodes).

    Args:
      nodes: The siblings, in order.
      roles: Optional default name per sibling (used instead of ``<kind>_<k>`` when the node has no
        name of its own), e.g. ``pre``/``branch`` inside a residual block.

    Returns:
      One name per node; None for nodes that create no module or scope.
    """
    roles = list(roles) if roles is not None else [None] * len(nodes)
    explicit = {n.name for n in nodes if type(n) in _KIND_PREFIX and n.name is not None}
    used: set[str] = set()
    names: list[str | None] = []
    for node, role in zip(nodes, roles):
        if type(node) not in _KIND_PREFIX:
            names.append(None)
            continue
        if node.name is not None:
            candidates = itertools.chain([node.name], (f"{node.name}_{k}" for k in itertools.count(1)))
        elif role is not None:
            candidates = itertools.chain([role], (f"{role}_{k}" for k in itertools.count(1)))
        else:
            prefix = _KIND_PREFIX[type(node)]
            candidates = (f"{prefix}_{k}" for k in itertools.count(0))
        # A default name never takes a name that a later sibling asks for explicitly.
        name = next(c for c in candidates if c not in used and (c == node.name or c not in explicit))
        used.add(name)
        names.append(name)
    return names


class _Interpreter:
    """Walks a layer specification inside a Haiku transform."""

    def __init__(self, activation: ActivationFn, init: str, bn_decay: float, is_training: bool):
        self.activation = activation
        self.w_init = initializers.get_initializer(init)
        self.b_init = hk.initializers.Constant(0.0)  # biases start at zero (DKS/TAT and the baselines)
        self.bn_decay = bn_decay
        self.is_training = is_training

    def run(self, node: g.Node, x: Array, name: str | None) -> Array:
        """Applies ``node`` to ``x``; ``name`` is its module or scope name (None if it has none)."""
        if isinstance(node, g.Act):
            return self.activation(x)
        if isinstance(node, g.Dense):
            if x.ndim > 2:
                # Sequences [batch, T, features]: one dense layer on the flattened rows (K-FAC's dense block).
                return sequence_layers.dense(x, node.features, with_bias=node.with_bias, w_init=self.w_init,
                                             b_init=self.b_init, name=name)
            return hk.Linear(node.features, with_bias=node.with_bias, w_init=self.w_init,
                             b_init=self.b_init, name=name)(x)
        if isinstance(node, g.Embed):
            return sequence_layers.Embedding(node, name=name)(x)
        if isinstance(node, g.Attention):
            return sequence_layers.SelfAttention(node, self.w_init, self.b_init, name=name)(x)
        if isinstance(node, g.LayerNorm):
            # On the flattened rows, like Dense: K-FAC's scale-and-shift block then sees one row per token.
            norm = hk.LayerNorm(axis=-1, create_scale=True, create_offset=True, name=name)
            return norm(x.reshape((-1, x.shape[-1]))).reshape(x.shape)
        if isinstance(node, g.Conv):
            if x.ndim != 4:
                raise ValueError(f"Conv layer {name!r} needs NHWC inputs (rank 4), got shape {x.shape}; "
                                 "feed images, not flattened vectors.")
            return hk.Conv2D(node.features, kernel_shape=node.kernel_size, stride=node.stride,
                             padding="SAME", with_bias=node.with_bias, w_init=self.w_init,
                             b_init=self.b_init, name=name)(x)
        if isinstance(node, g.Pool):
            window, stride = (1, node.window, node.window, 1), (1, node.stride, node.stride, 1)
            if node.kind == "max":
                return hk.max_pool(x, window, stride, padding="SAME")
            if node.kind == "avg":
                return hk.avg_pool(x, window, stride, padding="SAME")
            raise ValueError(f"Pool kind must be 'max' or 'avg', got {node.kind!r}.")
        if isinstance(node, g.GlobalAvgPool):
            return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))
        if isinstance(node, g.Flatten):
            return x.reshape(x.shape[0], -1)
        if isinstance(node, g.Dropout):
            if not self.is_training or node.rate == 0.0:
                return x
            key = hk.maybe_next_rng_key()
            if key is None:
                raise ValueError("Dropout in training needs a PRNG key: pass rng to apply().")
            return hk.dropout(key, node.rate, x)
        if isinstance(node, g.PerLocationNorm):
            return pln.per_location_normalization(x, node.homog_mode)
        if isinstance(node, g.BatchNorm):
            return hk.BatchNorm(create_scale=True, create_offset=True, decay_rate=self.bn_decay,
                                name=name)(x, is_training=self.is_training)
        if isinstance(node, g.Sequential):
            with hk.name_scope(name):
                return self.sequence(node.layers, x)
        if isinstance(node, g.WeightedSum):
            with hk.name_scope(name):
                return self.weighted_sum(node, x)
        if isinstance(node, g.PreActResidual):
            with hk.name_scope(name):
                return self.residual(node, x)
        raise TypeError(f"Unknown layer specification node: {node!r}")

    def sequence(self, layers: Sequence[g.Node], x: Array,
                 trace: list[Array] | None = None) -> Array:
        for layer, name in zip(layers, child_names(layers)):
            x = self.run(layer, x, name)
            if trace is not None:
                trace.append(x)
        return x

    def weighted_sum(self, node: g.WeightedSum, x: Array) -> Array:
        names = child_names(node.branches, [f"branch_{i}" for i in range(len(node.branches))])
        weights = node.weights if node.weights is not None else (None,) * len(node.branches)
        total = None
        for branch, name, w in zip(node.branches, names, weights):
            if w == 0.0:
                # A zero-weight branch does not reach the output: building it would only create dead
                # parameters (which K-FAC would have to register as orphans). The kernel graph agrees.
                continue
            out = self.run(branch, x, name)
            out = out if w is None else w * out
            total = out if total is None else total + out
        if total is None:
            raise ValueError(f"WeightedSum {node.name!r} has no branch with a non-zero weight.")
        return total

    def residual(self, node: g.PreActResidual, x: Array) -> Array:
        parts = [node.pre, node.branch] + ([node.projection] if node.projection is not None else [])
        names = child_names(parts, ["pre", "branch", "projection"])
        h = self.run(node.pre, x, names[0])
        res = self.run(node.branch, h, names[1])
        w = node.shortcut_weight
        if w == 0.0:
            # As in the kernel graph, the shortcut (and any projection) is absent.
            return res
        shortcut = x if node.projection is None else self.run(node.projection, h, names[2])
        if w is None:
            return shortcut + res
        return w * shortcut + math.sqrt(1.0 - w * w) * res


def _num_random_draws(node: g.Node) -> int:
    """Random weight draws a node makes at initialization (only an upper bound matters: key reservation)."""
    if isinstance(node, (g.Dense, g.Conv)):
        return 1
    if isinstance(node, g.Embed):
        return 2 if node.positional == "learned" else 1
    if isinstance(node, g.Attention):
        return 4
    return 0


def apply_spec(spec: g.Node, x: Array, *, activation: ActivationFn, init: str = "orthogonal",
               is_training: bool = False, return_trace: bool = False,
               bn_decay: float = DEFAULT_BN_DECAY) -> Array | tuple[Array, list[Array]]:
    """Runs the network described by ``spec`` on ``x`` (inside a Haiku transform).

    Args:
      spec: The layer specification (usually a ``Sequential``).
      x: The input batch (NHWC images, ``[batch, features]`` vectors for dense-only networks, or int
        tokens ``[batch, T]`` for sequence models).
      activation: The nonlinearity applied at every ``Act`` node (a ``TransformedActivation``).
      init: Weight initializer name (``initializers.INIT_NAMES``); biases start at zero.
      is_training: Enables dropout and batch statistics in ``BatchNorm``.
      return_trace: Also return the activations after each top-level layer of ``spec`` (entry ``i``
        matches entry ``i`` of ``dks_jax.kernels.graph.trace``).
      bn_decay: Decay of the batch-norm moving averages.

    Returns:
      The output, or ``(output, trace)`` when ``return_trace`` is set.
    """
    interpreter = _Interpreter(activation, init, bn_decay, is_training)
    if hk.running_init():
        # One key split for all weight initializers instead of one per layer: each split is a separate
        # threefry computation for XLA to compile, a large share of a deep network's init compile time.
        hk.reserve_rng_keys(sum(_num_random_draws(n) for n in g.iter_nodes(spec)) or 1)
    trace: list[Array] | None = [] if return_trace else None
    if isinstance(spec, g.Sequential):
        # The outer Sequential opens no scope, so names start at the top-level layers (stable when the
        # specification's display name changes, e.g. with the depth).
        out = interpreter.sequence(spec.layers, x, trace)
    else:
        out = interpreter.run(spec, x, child_names([spec])[0])
        if trace is not None:
            trace.append(out)
    return (out, trace) if return_trace else out


def make_forward(spec: g.Node, activation: ActivationFn, *, init: str = "orthogonal",
                 bn_decay: float = DEFAULT_BN_DECAY) -> Callable[..., Array | tuple[Array, list[Array]]]:
    """``forward(x, is_training=False, return_trace=False)`` for ``hk.transform_with_state``.

    Args:
      spec: The layer specification.
      activation: The nonlinearity of every ``Act`` node.
      init: Weight initializer name.
      bn_decay: Decay of the batch-norm moving averages.

    Returns:
      The forward function (it must run inside a Haiku transform).
    """
    g.validate(spec)
    initializers.get_initializer(init)  # fail early, outside the transform, on a bad name

    def forward(x: Array, is_training: bool = False, return_trace: bool = False):
        return apply_spec(spec, x, activation=activation, init=init, is_training=is_training,
                          return_trace=return_trace, bn_decay=bn_decay)

    return forward
