"""Parameter counts and multiply-accumulate counts of layer specifications, and a markdown table.

Everything here is arithmetic on the specification and the input shape (no Haiku, no arrays), so it costs
nothing even for ResNet-200 at 224 x 224. Costs counted:

* MACs (multiply-accumulates) of every dense and convolutional layer: ``outputs x fan_in``; bias
  additions, activations, pooling and normalization are not counted (they are lower order). FLOPs are
  ``2 x MACs`` under the usual convention; the table prints both.
* Parameters: weights and biases, batch-norm and layer-norm scales and offsets (batch norm's moving
  averages are state, not parameters).
* Sequence models (input ``(T,)`` token ids): the embedding counts its one-hot matrix product, attention
  its four projections plus ``Q K^T`` and ``A V``.

``python -m experiments.model_summary`` prints the table.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from dks_jax.kernels import graph as g
from dks_jax.kernels import layouts

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Cost:
    """Parameters and MACs of a (sub)network for one example, and its output shape."""

    params: int
    macs: int
    output_shape: Shape

    @property
    def flops(self) -> int:
        """``2 * macs``: one multiply and one add per multiply-accumulate."""
        return 2 * self.macs


def _pln_channels(channels: int, mode: str) -> int:
    # Mirrors dks_jax.data.pln.output_channels without importing it: 'none'/'off' append nothing.
    return channels if mode in ("none", "off") else channels + 1


def cost(node: g.Node, input_shape: Sequence[int]) -> Cost:
    """Parameters, MACs and output shape of ``node`` on one example of shape ``input_shape``.

    Args:
      node: A layer specification.
      input_shape: One example's shape without the batch axis: ``(H, W, C)``, ``(D,)`` or ``(T,)`` tokens.

    Returns:
      The ``Cost``.
    """
    shape = tuple(int(d) for d in input_shape)
    if isinstance(node, g.Dense):
        fan_in, locations = shape[-1], math.prod(shape[:-1])
        params = fan_in * node.features + (node.features if node.with_bias else 0)
        return Cost(params, locations * fan_in * node.features, shape[:-1] + (node.features,))
    if isinstance(node, g.Conv):
        if len(shape) != 3:
            raise ValueError(f"Conv needs an (H, W, C) input, got {shape}.")
        h, w, c = shape
        # SAME padding: ceil(size / stride) outputs per spatial axis.
        out = (-(-h // node.stride), -(-w // node.stride), node.features)
        fan_in = node.kernel_size**2 * c
        params = fan_in * node.features + (node.features if node.with_bias else 0)
        return Cost(params, out[0] * out[1] * fan_in * node.features, out)
    if isinstance(node, g.Pool):
        h, w, c = shape
        return Cost(0, 0, (-(-h // node.stride), -(-w // node.stride), c))
    if isinstance(node, g.GlobalAvgPool):
        return Cost(0, 0, shape[-1:])
    if isinstance(node, g.Flatten):
        return Cost(0, 0, (math.prod(shape),))
    if isinstance(node, g.PerLocationNorm):
        return Cost(0, 0, shape[:-1] + (_pln_channels(shape[-1], node.homog_mode),))
    if isinstance(node, (g.BatchNorm, g.LayerNorm)):
        return Cost(2 * shape[-1], 0, shape)
    if isinstance(node, g.Embed):
        if len(shape) != 1:
            raise ValueError(f"Embed needs a (T,) token input, got {shape}.")
        length, d = shape[0], node.features
        params = node.vocab_size * d + (length * d if node.positional == "learned" else 0)
        # Counted as implemented: a one-hot matrix product (T x vocab x features).
        return Cost(params, length * node.vocab_size * d, (length, d))
    if isinstance(node, g.Attention):
        if len(shape) != 2:
            raise ValueError(f"Attention needs a (T, features) input, got {shape}.")
        length, d = shape
        params = 4 * (d * d + d) + (2 if node.value_skip is not None else 0)
        # Four projections, then Q K^T and A V over the T x T attention matrix.
        return Cost(params, 4 * length * d * d + 2 * length * length * d, shape)
    if isinstance(node, (g.Act, g.Dropout)):
        return Cost(0, 0, shape)
    if isinstance(node, g.Sequential):
        return _chain(node.layers, shape)
    if isinstance(node, g.WeightedSum):
        costs = [cost(b, shape) for w, b in zip(node.weights or (None,) * len(node.branches),
                                                node.branches) if w != 0.0]
        _same_shapes(costs, node)
        return Cost(sum(c.params for c in costs), sum(c.macs for c in costs), costs[0].output_shape)
    if isinstance(node, g.PreActResidual):
        pre = cost(node.pre, shape)
        branch = cost(node.branch, pre.output_shape)
        parts = [pre, branch]
        if node.shortcut_weight != 0.0 and node.projection is not None:
            projection = cost(node.projection, pre.output_shape)
            _same_shapes([branch, projection], node)
            parts.append(projection)
        elif node.shortcut_weight != 0.0:
            _same_shapes([branch, Cost(0, 0, shape)], node)
        return Cost(sum(c.params for c in parts), sum(c.macs for c in parts), branch.output_shape)
    raise TypeError(f"Unknown layer specification node: {node!r}")


def _chain(layers: Sequence[g.Node], shape: Shape) -> Cost:
    params = macs = 0
    for layer in layers:
        c = cost(layer, shape)
        params, macs, shape = params + c.params, macs + c.macs, c.output_shape
    return Cost(params, macs, shape)


def _same_shapes(costs: Sequence[Cost], node: g.Node) -> None:
    shapes = {c.output_shape for c in costs}
    if len(shapes) > 1:
        raise ValueError(f"{type(node).__name__} {getattr(node, 'name', None)!r}: its branches give "
                         f"different shapes {sorted(shapes)}.")


# ----------------------------------------------------------------------------------------------
# The table.

IMAGENET_SHAPE = (224, 224, 3)
CIFAR_SHAPE = (32, 32, 3)


def standard_rows() -> list[tuple[str, str, g.Node, Shape]]:
    """``(model, input, spec, input_shape)`` for every ResNet depth at ImageNet and CIFAR shapes, and MLPs."""
    rows = []
    for depth in sorted(layouts.RESNET_SHAPES):
        for label, shape, stem, classes in (("ImageNet 224", IMAGENET_SHAPE, "imagenet", 1000),
                                            ("CIFAR 32", CIFAR_SHAPE, "small", 10)):
            for model, w, bn in (("vanilla_resnet", 0.0, False), ("tat_resnet", 0.8, False),
                                 ("resnet_bn", None, True)):
                spec = layouts.resnet(depth, classes, shortcut_weight=w, stem=stem, use_batch_norm=bn)
                rows.append((f"{model}-{depth}", label, spec, shape))
    for depth, width in ((50, 64), (100, 64)):
        rows.append((f"convnet {depth}x{width}", "MNIST 28x28", layouts.convnet(depth, width, 10), (28, 28, 1)))
    for depth, width, label, shape, classes in ((30, 256, "digits 8x8", (8, 8, 1), 10),
                                                (50, 1024, "MNIST 28x28", (28, 28, 1), 10),
                                                (100, 1024, "CIFAR 32", CIFAR_SHAPE, 10)):
        rows.append((f"mlp {depth}x{width}", label, layouts.mlp(depth, width, classes), shape))
    return rows


def markdown_table(rows: Sequence[tuple[str, str, g.Node, Shape]] | None = None) -> str:
    """A markdown table of parameters, MACs and FLOPs per example (one row per model and input)."""
    rows = standard_rows() if rows is None else rows
    lines = ["| model | input | nonlinear layers | parameters | MACs / example | FLOPs / example (2 x MACs) |",
             "|---|---|---:|---:|---:|---:|"]
    for model, label, spec, shape in rows:
        c = cost(spec, shape)
        lines.append(f"| {model} | {label} {'x'.join(map(str, shape))} | "
                     f"{g.count_nonlinear_layers(spec)} | {c.params:,} ({c.params / 1e6:.2f} M) | "
                     f"{c.macs:,} ({c.macs / 1e9:.3f} G) | {c.flops / 1e9:.3f} G |")
    return "\n".join(lines)
