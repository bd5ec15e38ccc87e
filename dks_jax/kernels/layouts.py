"""Layer specifications of the common architectures: plain stacks, MLPs and ResNet-V2 shapes.

These are the layouts both the solver (through ``graph.subnet_max_func``) and the Haiku builder in
``dks_jax.nets`` read, so the kernel graph and the module can never disagree. Pure Python.
"""

from __future__ import annotations

import dataclasses
import math

from dks_jax.kernels import graph as g


@dataclasses.dataclass(frozen=True)
class ResNetShape:
    """Blocks per group, bottleneck or basic, output channels per group."""

    blocks_per_group: tuple[int, int, int, int]
    bottleneck: bool
    channels_per_group: tuple[int, int, int, int]


RESNET_SHAPES: dict[int, ResNetShape] = {
    18: ResNetShape((2, 2, 2, 2), False, (64, 128, 256, 512)),
    34: ResNetShape((3, 4, 6, 3), False, (64, 128, 256, 512)),
    50: ResNetShape((3, 4, 6, 3), True, (256, 512, 1024, 2048)),
    101: ResNetShape((3, 4, 23, 3), True, (256, 512, 1024, 2048)),
    152: ResNetShape((3, 8, 36, 3), True, (256, 512, 1024, 2048)),
    200: ResNetShape((3, 24, 36, 3), True, (256, 512, 1024, 2048)),
}
GROUP_STRIDES = (1, 2, 2, 2)
STEMS = ("imagenet", "small")


def plain_stack(num_nonlinear_layers: int) -> g.Sequential:
    """A chain of ``num_nonlinear_layers`` (dense, activation) pairs: the simplest kernel graph.

    Its ``M`` is ``r`` composed ``L`` times, the plain networks of the papers' tables.
    """
    if num_nonlinear_layers < 0:
        raise ValueError(f"plain_stack: num_nonlinear_layers must be >= 0, got {num_nonlinear_layers}.")
    return g.Sequential(tuple(g.Act() for _ in range(num_nonlinear_layers)), name="plain_stack")


def mlp(depth: int, width: int, num_classes: int, *, dropout_rate: float = 0.0,
        pln_mode: str | None = None) -> g.Sequential:
    """A vanilla MLP: ``depth`` hidden (Dense, Act) layers of ``width`` units, then dense logits.

    Args:
      depth: Number of hidden layers (= nonlinear layers).
      width: Units per hidden layer.
      num_classes: Output logits.
      dropout_rate: Dropout before the logits (0 disables it).
      pln_mode: If not None, per-location normalization of the input with this homogeneous mode
        ('none', 'const', 'avg_q').

    Returns:
      The layer specification.
    """
    _check_positive(depth=depth, width=width, num_classes=num_classes)
    layers: list[g.Node] = []
    if pln_mode is not None:
        layers.append(g.PerLocationNorm(pln_mode))
    layers.append(g.Flatten())
    for i in range(depth):
        layers += [g.Dense(width, name=f"dense_{i}"), g.Act()]
    if dropout_rate:
        layers.append(g.Dropout(dropout_rate))
    layers.append(g.Dense(num_classes, name="logits"))
    return g.Sequential(tuple(layers), name=f"mlp_{depth}x{width}")


def convnet(depth: int, width: int, num_classes: int, *, num_downsamples: int = 2,
            dropout_rate: float = 0.0, pln_mode: str | None = None) -> g.Sequential:
    """A vanilla all-convolutional network: a 3x3 stem, then ``depth`` (Act, 3x3 Conv) pairs.

    ``num_downsamples`` of the convolutions (evenly spaced) have stride 2 (28x28 -> 7x7 for two). A final
    activation, global average pooling and dense logits follow, as in the ResNet-V2 shapes.

    Args:
      depth: Nonlinear layers before the final one (the network has ``depth + 1``).
      width: Channels of every convolution.
      num_classes: Output logits.
      num_downsamples: How many stride-2 convolutions.
      dropout_rate: Dropout before the logits.
      pln_mode: Per-location normalization of the input (None disables it).

    Returns:
      The layer specification.
    """
    _check_positive(depth=depth, width=width, num_classes=num_classes)
    strided = {(i + 1) * depth // (num_downsamples + 1) for i in range(num_downsamples)}
    layers: list[g.Node] = []
    if pln_mode is not None:
        layers.append(g.PerLocationNorm(pln_mode))
    layers.append(g.Conv(width, 3, 1, name="stem_conv"))
    for i in range(depth):
        layers += [g.Act(), g.Conv(width, 3, 2 if i in strided else 1, name=f"conv_{i}")]
    layers += [g.Act(), g.GlobalAvgPool()]
    if dropout_rate:
        layers.append(g.Dropout(dropout_rate))
    layers.append(g.Dense(num_classes, name="logits"))
    return g.Sequential(tuple(layers), name=f"convnet_{depth}x{width}")


def residual_mlp(depth: int, width: int, num_classes: int, *, shortcut_weight: float | None = None,
                 use_batch_norm: bool = True, dropout_rate: float = 0.0) -> g.Sequential:
    """A pre-activation residual MLP: the MLP-shaped counterpart of the ResNet-V2 baseline.

    A dense stem, ``depth // 2`` blocks ``x + Dense(Act(BN(Dense(Act(BN(x))))))`` and a final
    ``Act(BN(x))`` before the logits, so it has ``depth + 1`` nonlinear layers like ``mlp(depth + 1)``.

    Args:
      depth: Nonlinear layers inside the residual blocks (rounded down to even).
      width: Units of every dense layer.
      num_classes: Output logits.
      shortcut_weight: ``None`` for the standard sum, or ``w`` for a normalized sum (TAT-style).
      use_batch_norm: Batch normalization before every activation.
      dropout_rate: Dropout before the logits.

    Returns:
      The layer specification.
    """
    _check_positive(depth=depth, width=width, num_classes=num_classes)

    def pre() -> tuple[g.Node, ...]:
        return ((g.BatchNorm(),) if use_batch_norm else ()) + (g.Act(),)

    layers: list[g.Node] = [g.Flatten(), g.Dense(width, name="stem")]
    for i in range(depth // 2):
        branch = g.Sequential((g.Dense(width),) + pre() + (g.Dense(width),))
        layers.append(g.PreActResidual(g.Sequential(pre()), branch, None, shortcut_weight,
                                       name=f"block_{i}"))
    layers += list(pre())
    if dropout_rate:
        layers.append(g.Dropout(dropout_rate))
    layers.append(g.Dense(num_classes, name="logits"))
    return g.Sequential(tuple(layers), name=f"residual_mlp_{depth}x{width}")


def resnet(depth: int, num_classes: int, *, shortcut_weight: float | None = 0.0,
           width_multiplier: float = 1.0, stem: str = "imagenet", use_batch_norm: bool = False,
           dropout_rate: float = 0.0, pln_mode: str | None = None) -> g.Sequential:
    """A ResNet-V2-shaped convnet.

    ``shortcut_weight=0`` gives the *vanilla* network of the DKS/TAT papers: every shortcut (projection
    ones too) and every normalization layer removed, widths kept. ``0 < shortcut_weight < 1`` gives the
    TAT-ResNet (weighted shortcuts, no normalization); ``shortcut_weight=None`` with
    ``use_batch_norm=True`` gives the standard ResNet-V2 baseline.

    Args:
      depth: One of 18, 34, 50, 101, 152, 200.
      num_classes: Output logits.
      shortcut_weight: ``w`` in ``w * shortcut + sqrt(1 - w^2) * residual``, or None for a plain sum.
      width_multiplier: Scales every channel count (the stem's too).
      stem: 'imagenet' (7x7/2 conv with 64 channels, 3x3/2 max-pool) or 'small' (3x3/1 conv, no pool)
        for 28x28 and 32x32 inputs.
      use_batch_norm: Batch normalization before every activation (baseline only).
      dropout_rate: Dropout before the logits.
      pln_mode: Per-location normalization of the input (None disables it).

    Returns:
      The layer specification.
    """
    if depth not in RESNET_SHAPES:
        raise ValueError(f"resnet: depth must be one of {sorted(RESNET_SHAPES)}, got {depth}.")
    if stem not in STEMS:
        raise ValueError(f"resnet: stem must be one of {STEMS}, got {stem!r}.")
    if shortcut_weight is not None and not 0.0 <= shortcut_weight <= 1.0:
        raise ValueError(f"resnet: shortcut_weight must lie in [0, 1] or be None, got {shortcut_weight}.")
    if width_multiplier <= 0:
        raise ValueError(f"resnet: width_multiplier must be > 0, got {width_multiplier}.")
    _check_positive(num_classes=num_classes)
    shape = RESNET_SHAPES[depth]
    width = lambda c: max(1, int(round(c * width_multiplier)))
    bias = not use_batch_norm

    def pre() -> g.Sequential:
        return g.Sequential(((g.BatchNorm(),) if use_batch_norm else ()) + (g.Act(),))

    layers: list[g.Node] = []
    if pln_mode is not None:
        layers.append(g.PerLocationNorm(pln_mode))
    if stem == "imagenet":
        layers += [g.Conv(width(64), 7, 2, bias, name="stem_conv"), g.Pool("max", 3, 2)]
    else:
        layers += [g.Conv(width(64), 3, 1, bias, name="stem_conv")]

    for gi, (blocks, channels) in enumerate(zip(shape.blocks_per_group, shape.channels_per_group)):
        for bi in range(blocks):
            stride = GROUP_STRIDES[gi] if bi == 0 else 1
            out_ch = width(channels)
            name = f"group_{gi}_block_{bi}"
            if shape.bottleneck:
                mid = width(channels // 4)
                convs = [g.Conv(mid, 1, 1, bias), g.Conv(mid, 3, stride, bias), g.Conv(out_ch, 1, 1, bias)]
            else:
                convs = [g.Conv(out_ch, 3, stride, bias), g.Conv(out_ch, 3, 1, bias)]
            # The branch after the block's first activation: conv, (BN, act, conv)*.
            branch: list[g.Node] = [convs[0]]
            for conv in convs[1:]:
                branch += list(pre().layers) + [conv]
            # Standard ResNets project when the shape changes (first block of a group, except the
            # first group of a basic-block net, whose stem already has its channel count).
            needs_projection = bi == 0 and (shape.bottleneck or gi > 0)
            if shortcut_weight == 0.0:
                layers.append(g.Sequential(pre().layers + tuple(branch), name=name))
            else:
                projection = g.Conv(out_ch, 1, stride, bias, name="shortcut_conv") if needs_projection \
                    else None
                layers.append(g.PreActResidual(pre(), g.Sequential(tuple(branch)), projection,
                                               shortcut_weight, name=name))

    layers += list(pre().layers) + [g.GlobalAvgPool()]
    if dropout_rate:
        layers.append(g.Dropout(dropout_rate))
    layers.append(g.Dense(num_classes, name="logits"))
    kind = "vanilla" if shortcut_weight == 0.0 else ("resnet" if shortcut_weight is None else
                                                     f"tat_resnet_w{shortcut_weight:g}")
    return g.Sequential(tuple(layers), name=f"{kind}_{depth}")


def residual_weights(shortcut_weight: float) -> tuple[float, float]:
    """``(w, sqrt(1 - w^2))``: the shortcut and residual weights of a normalized sum."""
    return shortcut_weight, math.sqrt(1.0 - shortcut_weight**2)


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{key} must be a positive integer, got {value!r}.")
