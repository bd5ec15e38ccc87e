"""Layer specifications of the common architectures: plain stacks, MLPs, ResNet-V2 shapes, transformers.

These are the layouts both the solver (through ``graph.subnet_max_func``) and the Haiku builder in
``dks_jax.nets`` read, so the kernel graph and the module can never disagree. Pure Python.
"""

from __future__ import annotations

import dataclasses
import math

from dks_jax.kernels import attention as attention_lib
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


TRANSFORMER_BLOCKS = ("vanilla", "norm_only", "skips_only", "pre_ln")
TRANSFORMER_ATTENTION = ("softmax", "espa", "uspa", "value_skipinit")


def transformer(num_blocks: int, width: int, vocab_size: int, *, num_heads: int = 4, mlp_ratio: int = 4,
                attention: str = "espa", block: str = "vanilla", causal: bool = True,
                shortcut_weight: float | None = None, espa_gamma: float = 0.005, uspa_rho: float = 0.8,
                value_skip: tuple[float, float] = (1.0, 0.0), positional: str = "none") -> g.Sequential:
    """A decoder-only (causal) transformer over token sequences, one of the variants of He et al. (2023).

    Top-level layers: ``embed``, then per block ``attn_<i>`` and ``mlp_<i>`` (each a top-level layer, so
    diagnostics see the kernel after every sublayer), an optional ``final_norm`` and the ``logits``. The MLP
    sublayer is ``Dense(mlp_ratio * width), Act, Dense(width)``: one nonlinear layer per block.

    Blocks (``block``):

    * 'vanilla': no skips, no normalization: ``x -> Attn(x)``, ``x -> MLP(x)``;
    * 'norm_only': ``x -> Attn(LN(x))``, ``x -> MLP(LN(x))`` and a final LN (no skips);
    * 'skips_only': normalized shortcut sums ``w x + sqrt(1 - w^2) f(x)`` around every sublayer, no
      normalization (``w = shortcut_weight``);
    * 'pre_ln': the standard pre-LN transformer ``x + f(LN(x))`` with a final LN, and random query weights
      (its unnormalized sums have no kernel map: train it with an untransformed activation).

    Attention (``attention``), all with zero-initialized queries except in 'pre_ln':

    * 'softmax': plain softmax attention, uniform over the visible positions at initialization;
    * 'espa' / 'uspa': signal preserving attention with the E-SPA decay schedule ending at ``espa_gamma``
      or the U-SPA schedule ending at ``uspa_rho`` (``dks_jax.kernels.attention``);
    * 'value_skipinit': softmax attention with the matrix ``alpha I + beta A``, ``(alpha, beta)`` starting
      at ``value_skip``.

    Args:
      num_blocks: Transformer blocks L (attention + MLP each).
      width: Features of the residual stream (divisible by ``num_heads``).
      vocab_size: Token ids in, logits out.
      num_heads: Attention heads.
      mlp_ratio: Hidden units of the MLP per feature.
      attention: One of ``TRANSFORMER_ATTENTION``.
      block: One of ``TRANSFORMER_BLOCKS``.
      causal: Mask future positions (a language model); False for bidirectional attention.
      shortcut_weight: ``w`` in (0, 1) for 'skips_only'; must be None otherwise.
      espa_gamma: Final E-SPA decay rate gamma_L > 0.
      uspa_rho: Final U-SPA correlation rho_L in (0, 1).
      value_skip: Initial (alpha, beta) of Value-SkipInit.
      positional: 'none' or 'learned' (see ``graph.Embed``).

    Returns:
      The layer specification.
    """
    _check_positive(num_blocks=num_blocks, width=width, vocab_size=vocab_size, num_heads=num_heads,
                    mlp_ratio=mlp_ratio)
    if attention not in TRANSFORMER_ATTENTION:
        raise ValueError(f"transformer: attention must be one of {TRANSFORMER_ATTENTION}, got {attention!r}.")
    if block not in TRANSFORMER_BLOCKS:
        raise ValueError(f"transformer: block must be one of {TRANSFORMER_BLOCKS}, got {block!r}.")
    if width % num_heads:
        raise ValueError(f"transformer: width {width} is not divisible by num_heads {num_heads}.")
    if block == "skips_only":
        if shortcut_weight is None or not 0.0 < shortcut_weight < 1.0:
            raise ValueError(f"transformer: block 'skips_only' needs shortcut_weight in (0, 1), got "
                             f"{shortcut_weight!r}.")
    elif shortcut_weight is not None:
        raise ValueError(f"transformer: shortcut_weight is only used by block 'skips_only', got "
                         f"{shortcut_weight!r} with block {block!r}.")
    if attention == "espa":
        schedule = attention_lib.espa_schedule(num_blocks, espa_gamma)
    elif attention == "uspa":
        schedule = attention_lib.uspa_schedule(num_blocks, uspa_rho)
    else:
        schedule = [0.0] * (num_blocks + 1)
    kind = attention if attention in ("espa", "uspa") else "softmax"
    skip = tuple(float(v) for v in value_skip) if attention == "value_skipinit" else None

    def sublayer(name: str, layers: tuple[g.Node, ...]) -> g.Node:
        if block == "norm_only":
            return g.Sequential((g.LayerNorm(name="norm"),) + layers, name=name)
        if block == "vanilla":
            return g.Sequential(layers, name=name) if len(layers) > 1 else layers[0]
        residual = g.Sequential(((g.LayerNorm(name="norm"),) if block == "pre_ln" else ()) + layers,
                                name="residual")
        weights = residual_weights(shortcut_weight) if block == "skips_only" else None
        return g.WeightedSum((g.Sequential(()), residual), weights, name=name)

    layers: list[g.Node] = [g.Embed(vocab_size, width, positional, name="embed")]
    for i in range(num_blocks):
        # In a vanilla block the attention layer is itself the top-level layer, so it carries its name.
        attn = g.Attention(num_heads, kind, causal, schedule[i], schedule[i + 1], skip,
                           zero_query_init=block != "pre_ln",
                           name=f"attn_{i}" if block == "vanilla" else "attention")
        layers.append(sublayer(f"attn_{i}", (attn,)))
        mlp = (g.Dense(mlp_ratio * width, name="fc_in"), g.Act(), g.Dense(width, name="fc_out"))
        layers.append(sublayer(f"mlp_{i}", mlp))
    if block in ("norm_only", "pre_ln"):
        layers.append(g.LayerNorm(name="final_norm"))
    layers.append(g.Dense(vocab_size, name="logits"))
    spec = g.Sequential(tuple(layers), name=f"transformer_{block}_{attention}_{num_blocks}x{width}")
    g.validate(spec)
    return spec


def residual_weights(shortcut_weight: float) -> tuple[float, float]:
    """``(w, sqrt(1 - w^2))``: the shortcut and residual weights of a normalized sum."""
    return shortcut_weight, math.sqrt(1.0 - shortcut_weight**2)


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{key} must be a positive integer, got {value!r}.")
