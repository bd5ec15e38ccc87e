"""Model registry: config -> layer specification -> solved activation -> Haiku model.

``build_model(config, num_classes, input_shape)`` is the only way the rest of the project gets a network.
It builds the layer specification named by ``config.model``, solves the activation transformation on
*that* specification (the solver derives the subnetwork-maximizing function ``M`` from it) and wraps the
interpreter of ``builder`` in ``hk.transform_with_state``. Change the layout and both the parameters and
the activation follow.

Registered models:

* ``mlp``: ``config.depth`` hidden layers of ``config.width`` units;
* ``vanilla_resnet``: the ResNet-V2 shape of ``config.depth`` with every shortcut and normalization layer
  removed (the DKS/TAT papers' vanilla network);
* ``tat_resnet``: the same with shortcuts of weight ``config.shortcut_weight`` in (0, 1) and residual
  weight ``sqrt(1 - w^2)``, no normalization;
* ``convnet``: a vanilla all-convolutional network (3x3 stem, ``config.depth`` activation / 3x3 conv
  pairs of ``config.width`` channels, two of them strided);
* ``resnet_bn``: the standard ResNet-V2 baseline (batch norm, plain shortcut sums), untransformed ReLU and
  He initialization;
* ``residual_mlp_bn``: its MLP-shaped counterpart (dense stem, ``config.depth // 2`` pre-activation
  residual blocks of two dense layers, batch norm);
* ``transformer``: a decoder-only transformer over int token sequences ``(T,)`` (``num_classes`` is the
  vocabulary size; logits ``[batch, T, vocab]``), ``config.depth`` blocks of width ``config.width``; see
  the config's ``transformer`` section for its settings and ``layouts.transformer`` for the variants.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from dks_jax import transforms
from dks_jax.kernels import graph as g
from dks_jax.kernels import layouts
from dks_jax.kernels import sequence as sequence_lib
from dks_jax.nets import builder
from dks_jax.nets import initializers

SpecFactory = Callable[[Any, int], g.Sequential]

_REGISTRY: dict[str, SpecFactory] = {}
# What each model takes: 'images' (H, W, C), 'vectors' ((D,) or images, flattened first), 'tokens' (T,).
INPUT_KINDS = ("images", "vectors", "tokens")
_INPUTS: dict[str, str] = {}


def register_model(name: str, *, inputs: str = "images") -> Callable[[SpecFactory], SpecFactory]:
    """Registers ``factory(config, num_classes) -> layer specification`` under ``name``.

    Args:
      name: Registry name (``config.model``).
      inputs: One of ``INPUT_KINDS``: what one example looks like.
    """
    if inputs not in INPUT_KINDS:
        raise ValueError(f"register_model: inputs must be one of {INPUT_KINDS}, got {inputs!r}.")

    def decorator(factory: SpecFactory) -> SpecFactory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"Model {name!r} is already registered.")
        _REGISTRY[name] = factory
        _INPUTS[name] = inputs
        return factory

    return decorator


def model_inputs(name: str) -> str:
    """The input kind of registered model ``name`` ('images', 'vectors' or 'tokens')."""
    if name not in _REGISTRY:
        raise ValueError(f"config.model={name!r} is unknown; valid: {', '.join(list_models())}.")
    return _INPUTS[name]


def list_models() -> list[str]:
    """Names of the registered models."""
    return sorted(_REGISTRY)


# ----------------------------------------------------------------------------------------------
# Config helpers.


def _field(config: Any, key: str, default: Any = None) -> Any:
    """``config.key`` for ConfigDicts, dicts and plain objects, with a default for optional fields."""
    if isinstance(config, Mapping) or hasattr(config, "get"):
        return config.get(key, default)
    return getattr(config, key, default)


def _section(config: Any, key: str) -> dict[str, Any]:
    """A config section as keyword arguments (``{}`` when absent: the defaults apply)."""
    value = _field(config, key) or {}
    return dict(value.to_dict() if hasattr(value, "to_dict") else value)


def _pln_mode(config: Any) -> str | None:
    mode = _field(config, "pln_mode", "")
    return None if mode in ("", None) else str(mode)


def _resnet_depth(config: Any) -> int:
    depth = _field(config, "depth")
    if depth not in layouts.RESNET_SHAPES:
        raise ValueError(f"config.depth={depth!r} is not a ResNet depth for model "
                         f"{_field(config, 'model')!r}; valid: {sorted(layouts.RESNET_SHAPES)}.")
    return int(depth)


def _resnet_kwargs(config: Any) -> dict[str, Any]:
    stem = _field(config, "stem", "imagenet")
    if stem not in layouts.STEMS:
        raise ValueError(f"config.stem={stem!r} is invalid; valid: {', '.join(layouts.STEMS)}.")
    multiplier = float(_field(config, "width_multiplier", 1.0))
    if multiplier <= 0:
        raise ValueError(f"config.width_multiplier must be > 0, got {multiplier}.")
    return dict(width_multiplier=multiplier, stem=stem,
                dropout_rate=float(_field(config, "dropout_rate", 0.0)), pln_mode=_pln_mode(config))


def _require_no_shortcut_weight(config: Any) -> None:
    w = _field(config, "shortcut_weight", 0.0)
    if w not in (0, 0.0, None):
        raise ValueError(f"config.shortcut_weight={w} is only read by model 'tat_resnet' (and by model "
                         f"'transformer' with transformer.block='skips_only'); model "
                         f"{_field(config, 'model')!r} ignores it here. Set it to 0.0 or use one of those.")


# ----------------------------------------------------------------------------------------------
# The registered layouts.


@register_model("mlp", inputs="vectors")
def _mlp(config: Any, num_classes: int) -> g.Sequential:
    _require_no_shortcut_weight(config)
    depth, width = _field(config, "depth"), _field(config, "width")
    for key, value in (("depth", depth), ("width", width)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"config.{key} must be a positive integer for model 'mlp', got {value!r}.")
    return layouts.mlp(depth, width, num_classes, dropout_rate=float(_field(config, "dropout_rate", 0.0)),
                       pln_mode=_pln_mode(config))


@register_model("convnet")
def _convnet(config: Any, num_classes: int) -> g.Sequential:
    _require_no_shortcut_weight(config)
    depth, width = _field(config, "depth"), _field(config, "width")
    for key, value in (("depth", depth), ("width", width)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"config.{key} must be a positive integer for model 'convnet', got "
                             f"{value!r}.")
    return layouts.convnet(depth, width, num_classes,
                           dropout_rate=float(_field(config, "dropout_rate", 0.0)),
                           pln_mode=_pln_mode(config))


@register_model("vanilla_resnet")
def _vanilla_resnet(config: Any, num_classes: int) -> g.Sequential:
    _require_no_shortcut_weight(config)
    return layouts.resnet(_resnet_depth(config), num_classes, shortcut_weight=0.0,
                          **_resnet_kwargs(config))


@register_model("tat_resnet")
def _tat_resnet(config: Any, num_classes: int) -> g.Sequential:
    w = _field(config, "shortcut_weight")
    if not isinstance(w, (int, float)) or not 0.0 < w < 1.0:
        raise ValueError(f"config.shortcut_weight={w!r} is invalid for model 'tat_resnet': it must lie "
                         "strictly between 0 and 1 (0 is model 'vanilla_resnet'; a plain shortcut sum "
                         "is model 'resnet_bn').")
    return layouts.resnet(_resnet_depth(config), num_classes, shortcut_weight=float(w),
                          **_resnet_kwargs(config))


def _require_standard_baseline(config: Any) -> None:
    """The batch-normalized baselines: untransformed ReLU with He initialization, plain shortcut sums."""
    _require_no_shortcut_weight(config)
    model, method, activation = (_field(config, "model"), _field(config, "method"),
                                 _field(config, "activation"))
    if method != "untransformed":
        raise ValueError(f"config.method={method!r} is invalid for model {model!r}: batch-normalized "
                         "networks have no kernel map to transform for; valid: 'untransformed'.")
    if activation != "relu":
        raise ValueError(f"config.activation={activation!r} is invalid for model {model!r}: the "
                         "standard batch-normalized baseline uses 'relu'; valid: 'relu'.")
    init = _field(config, "init", "")
    if init not in ("", "default", "he_normal"):
        raise ValueError(f"config.init={init!r} is invalid for model {model!r}: the standard baseline "
                         "uses He initialization; valid: 'he_normal' (or '' for the default).")


@register_model("resnet_bn")
def _resnet_bn(config: Any, num_classes: int) -> g.Sequential:
    _require_standard_baseline(config)
    return layouts.resnet(_resnet_depth(config), num_classes, shortcut_weight=None,
                          use_batch_norm=True, **_resnet_kwargs(config))


@register_model("residual_mlp_bn", inputs="vectors")
def _residual_mlp_bn(config: Any, num_classes: int) -> g.Sequential:
    _require_standard_baseline(config)
    depth, width = _field(config, "depth"), _field(config, "width")
    for key, value in (("depth", depth), ("width", width)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"config.{key} must be a positive integer for model 'residual_mlp_bn', got "
                             f"{value!r}.")
    if depth < 2:
        raise ValueError(f"config.depth={depth} is too small for model 'residual_mlp_bn': each residual "
                         "block has 2 nonlinear layers; valid: depth >= 2.")
    if _pln_mode(config) is not None:
        raise ValueError(f"config.pln_mode={_pln_mode(config)!r} is not supported by model "
                         "'residual_mlp_bn' (its layout has no per-location normalization); valid: ''.")
    return layouts.residual_mlp(depth, width, num_classes, shortcut_weight=None, use_batch_norm=True,
                                dropout_rate=float(_field(config, "dropout_rate", 0.0)))


# The transformer's own settings live in the config's `transformer` section (configlib.SCHEMA documents
# them); these are the defaults for configs that leave some out (e.g. plain dicts).
TRANSFORMER_DEFAULTS = dict(num_heads=4, mlp_ratio=4, attention="espa", block="vanilla", causal=True,
                            positional="none", espa_gamma=0.005, uspa_rho=0.8, spa_rescale="target",
                            value_skip_alpha=1.0, value_skip_beta=0.0)
SPA_RESCALE_MODES = ("target", "propagated")


def transformer_settings(config: Any) -> dict[str, Any]:
    """The config's ``transformer`` section over the defaults (unknown keys are an error)."""
    section = _section(config, "transformer")
    unknown = set(section) - set(TRANSFORMER_DEFAULTS)
    if unknown:
        raise ValueError(f"config.transformer has no fields {sorted(unknown)}; valid: "
                         f"{', '.join(TRANSFORMER_DEFAULTS)}.")
    return {**TRANSFORMER_DEFAULTS, **section}


@register_model("transformer", inputs="tokens")
def _transformer(config: Any, num_classes: int) -> g.Sequential:
    t = transformer_settings(config)
    depth, width = _field(config, "depth"), _field(config, "width")
    for key, value in (("depth", depth), ("width", width)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"config.{key} must be a positive integer for model 'transformer', got "
                             f"{value!r}.")
    block, attention = t["block"], t["attention"]
    for key, valid in (("block", layouts.TRANSFORMER_BLOCKS), ("attention", layouts.TRANSFORMER_ATTENTION),
                       ("positional", g.POSITIONAL_MODES), ("spa_rescale", SPA_RESCALE_MODES)):
        if t[key] not in valid:
            raise ValueError(f"config.transformer.{key}={t[key]!r} is invalid; valid: {', '.join(valid)}.")
    heads, ratio = t["num_heads"], t["mlp_ratio"]
    for key, value in (("num_heads", heads), ("mlp_ratio", ratio)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"config.transformer.{key} must be a positive integer, got {value!r}.")
    if width % heads:
        raise ValueError(f"config.width={width} is not divisible by config.transformer.num_heads={heads}.")
    w = _field(config, "shortcut_weight", 0.0)
    if block == "skips_only":
        if not isinstance(w, (int, float)) or not 0.0 < w < 1.0:
            raise ValueError(f"config.shortcut_weight={w!r} is invalid for transformer.block='skips_only': "
                             "it must lie strictly between 0 and 1.")
        shortcut = float(w)
    else:
        _require_no_shortcut_weight(config)
        shortcut = None
    method = _field(config, "method")
    if block == "pre_ln" and method not in ("untransformed", "EOC"):
        raise ValueError(f"config.method={method!r} is invalid for transformer.block='pre_ln': its plain "
                         "shortcut sums have no kernel map to transform for; valid: 'untransformed', 'EOC'.")
    gamma, rho = float(t["espa_gamma"]), float(t["uspa_rho"])
    if attention == "espa" and not gamma > 0:
        raise ValueError(f"config.transformer.espa_gamma={gamma} is invalid: it must be > 0.")
    if attention == "uspa" and not 0.0 < rho < 1.0:
        raise ValueError(f"config.transformer.uspa_rho={rho} is invalid: it must lie strictly between 0 "
                         "and 1.")
    if not isinstance(t["causal"], bool):
        raise ValueError(f"config.transformer.causal={t['causal']!r} must be a boolean.")
    return layouts.transformer(
        depth, width, num_classes, num_heads=heads, mlp_ratio=ratio, attention=attention, block=block,
        causal=t["causal"], shortcut_weight=shortcut, espa_gamma=gamma, uspa_rho=rho,
        value_skip=(float(t["value_skip_alpha"]), float(t["value_skip_beta"])), positional=t["positional"])


def model_spec(config: Any, num_classes: int) -> g.Sequential:
    """The layer specification of ``config.model`` (validates the model's config fields)."""
    name = _field(config, "model")
    if name not in _REGISTRY:
        raise ValueError(f"config.model={name!r} is unknown; valid: {', '.join(list_models())}.")
    if not isinstance(num_classes, int) or num_classes <= 0:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    return _REGISTRY[name](config, num_classes)


def resolve_init(config: Any) -> str:
    """The weight initializer for ``config``: ``config.init``, or the method's default when ''.

    Defaults: 'orthogonal' (SUO / Delta) for DKS, TAT and EOC, whose activations are normalized for
    q-preserving weights; 'he_normal' for an untransformed ReLU and 'lecun_normal' for other untransformed
    activations.

    Raises:
      ValueError: Unknown name, or He initialization with a transformed activation (DKS/TAT/EOC already
        fold the right scale into the activation, so He's factor 2 would double q at every layer).
    """
    method, activation = _field(config, "method"), _field(config, "activation")
    init = _field(config, "init", "") or "default"
    if init == "default":
        if method == "untransformed":
            return "he_normal" if activation == "relu" else "lecun_normal"
        return "orthogonal"
    if init not in initializers.INIT_NAMES:
        raise ValueError(f"config.init={init!r} is unknown; valid: "
                         f"{', '.join(initializers.INIT_NAMES)} (or '' for the method's default).")
    if init == "he_normal" and method != "untransformed":
        raise ValueError(f"config.init='he_normal' does not go with config.method={method!r}: the "
                         "transformed activation already has the edge-of-chaos scale, so He's factor 2 "
                         "would double q at every layer. Use 'orthogonal' or 'lecun_normal', or "
                         "method 'untransformed'.")
    return init


def solve_activation(config: Any, spec: g.Node) -> transforms.TransformedActivation:
    """Solves ``config.activation`` under ``config.method`` for the network ``spec``."""
    name, method = _field(config, "activation"), _field(config, "method")
    if method not in transforms.METHODS:
        raise ValueError(f"config.method={method!r} is unknown; valid: {', '.join(transforms.METHODS)}.")
    # The config's `dks` and `tat` sections are the targets' keyword arguments, passed as they are.
    dks = transforms.DKSTargets(**_section(config, "dks"))
    tat = transforms.TATTargets(**_section(config, "tat"))
    try:
        return transforms.transform(name, method, network=spec, dks=dks, tat=tat)
    except ValueError as e:  # SolverError too: keep its type, add which config fields are involved
        raise type(e)(f"config.activation={name!r}, config.method={method!r}, model "
                      f"{getattr(spec, 'name', None)!r}: {e}") from e


# ----------------------------------------------------------------------------------------------
# The model object.


@dataclasses.dataclass(frozen=True)
class Model:
    """A network built from a layer specification, with its solved activation.

    Attributes:
      name: The registry name (``config.model``).
      spec: The layer specification (the kernel graph the activation was solved for).
      activation: The (transformed) activation used at every ``Act`` node of ``spec``.
      init_name: The weight initializer's name.
      num_classes: Number of logits.
      input_shape: Shape of one input example (without the batch axis).
      input_dtype: dtype of the inputs: 'float32' (images, vectors) or 'int32' (tokens).
      transformed: The ``hk.TransformedWithState`` of the forward function
        ``f(images, is_training=False, return_trace=False)``.
    """

    name: str
    spec: g.Sequential
    activation: transforms.TransformedActivation
    init_name: str
    num_classes: int
    input_shape: tuple[int, ...]
    transformed: hk.TransformedWithState = dataclasses.field(compare=False, repr=False)
    input_dtype: str = "float32"  # 'int32' for token inputs
    # Jitted copies of transformed.init / transformed.apply: eager Haiku dispatches (and compiles) every
    # op separately, which for a deep net costs far more than one compilation of the whole graph.
    _jit_init: Callable[..., Any] = dataclasses.field(init=False, compare=False, repr=False)
    _jit_apply: Callable[..., Any] = dataclasses.field(init=False, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "_jit_init",
                           jax.jit(self.transformed.init, static_argnames=("is_training",)))
        object.__setattr__(self, "_jit_apply", jax.jit(self.transformed.apply,
                                                       static_argnames=("is_training", "return_trace")))

    @property
    def uses_batch_norm(self) -> bool:
        """Whether the network has batch normalization (and so mutable state and no kernel map)."""
        return g.uses_batch_norm(self.spec)

    def dummy_input(self, batch_size: int = 1) -> jax.Array:
        """Zeros of shape ``(batch_size, *input_shape)`` (the initializers do not read input values)."""
        return jnp.zeros((batch_size,) + self.input_shape, self.input_dtype)

    def init(self, rng: jax.Array, images: jax.Array | None = None) -> tuple[hk.Params, hk.State]:
        """Initial ``(params, state)``; ``images`` defaults to ``dummy_input()``."""
        images = self.dummy_input() if images is None else images
        return self._jit_init(rng, images, is_training=True)

    def apply(self, params: hk.Params, state: hk.State, rng: jax.Array | None, images: jax.Array,
              is_training: bool = False) -> tuple[jax.Array, hk.State]:
        """Logits and the new state (batch-norm statistics; empty for the other models).

        Not jitted: wrap the training step in ``jax.jit``. This matters for K-FAC: kfac-jax 0.0.8's graph
        matcher registers every layer behind an inner ``jax.jit`` as a generic (diagonal) block instead of
        a dense / conv2d one. ``apply_jit`` is the jitted copy for inference and diagnostics.

        Args:
          params: Parameters.
          state: State (``{}`` without batch norm).
          rng: PRNG key; needed only for dropout in training.
          images: Input batch.
          is_training: Training mode (dropout on, batch norm on batch statistics).

        Returns:
          ``(logits, new_state)``.
        """
        return self.transformed.apply(params, state, rng, images, is_training=is_training)

    def apply_jit(self, params: hk.Params, state: hk.State, rng: jax.Array | None, images: jax.Array,
                  is_training: bool = False) -> tuple[jax.Array, hk.State]:
        """``apply`` under ``jax.jit`` (compiled once per input shape; not for K-FAC loss functions)."""
        return self._jit_apply(params, state, rng, images, is_training=is_training)

    def apply_with_trace(self, params: hk.Params, state: hk.State, images: jax.Array,
                         rng: jax.Array | None = None, is_training: bool = False
                         ) -> tuple[tuple[jax.Array, list[jax.Array]], hk.State]:
        """``((logits, trace), new_state)``, jitted: trace entry ``i`` is the output of top-level layer
        ``i`` of ``spec`` (the points where ``dks_jax.kernels.graph.trace`` predicts kernel values)."""
        return self._jit_apply(params, state, rng, images, is_training=is_training, return_trace=True)

    @staticmethod
    def num_params(params: hk.Params) -> int:
        """Number of trainable scalars in ``params``."""
        return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(params)))

    def param_shapes(self) -> hk.Params:
        """Parameter shapes (``jax.ShapeDtypeStruct``s) without allocating or initializing anything."""
        params, _ = jax.eval_shape(functools.partial(self.transformed.init, is_training=True),
                                   jax.random.PRNGKey(0), self.dummy_input())
        return params


def build_model(config: Any, num_classes: int, input_shape: tuple[int, ...] | list[int]) -> Model:
    """Builds the model described by ``config``.

    Args:
      config: A config (or a plain dict) with the model fields of ``configlib.SCHEMA`` (``model``,
        ``depth``, ``width``, ``width_multiplier``, ``stem``, ``shortcut_weight``, ``dropout_rate``,
        ``init``, ``pln_mode``, ``activation``, ``method``) and optionally the ``dks``/``tat`` sections of
        targets.
      num_classes: Number of logits.
      input_shape: Shape of one input example without the batch axis: ``(H, W, C)`` images (required by
        the ResNets), ``(D,)`` vectors (MLP only) or ``(T,)`` token ids (the transformer; ``num_classes``
        is then the vocabulary size). Per-location normalization, when
        ``config.pln_mode`` is set, is the model's first layer: do not apply it in the input pipeline too.

    Returns:
      The ``Model``.

    Raises:
      ValueError: Invalid config fields (the message names the field and its valid values), or targets
        the solver cannot reach (``transforms.SolverError``).
    """
    input_shape = tuple(int(d) for d in input_shape)
    name = _field(config, "model")
    inputs = model_inputs(name)
    if inputs == "tokens":
        if len(input_shape) != 1 or input_shape[0] < 1:
            raise ValueError(f"Model {name!r} needs token sequences of shape (T,), got input_shape "
                             f"{input_shape}.")
        if _pln_mode(config) is not None:
            raise ValueError(f"config.pln_mode={_pln_mode(config)!r} does not apply to model {name!r} "
                             "(token inputs); valid: ''.")
    elif inputs == "images" and len(input_shape) != 3:
        raise ValueError(f"Model {name!r} needs image inputs of shape (H, W, C), got input_shape "
                         f"{input_shape}.")
    if _pln_mode(config) is not None and len(input_shape) < 2:
        raise ValueError(f"config.pln_mode={_pln_mode(config)!r} needs inputs with a channel axis "
                         f"(H, W, C), got input_shape {input_shape}.")
    spec = model_spec(config, num_classes)
    init = resolve_init(config)
    activation = solve_activation(config, spec)
    if inputs == "tokens" and transformer_settings(config)["spa_rescale"] == "propagated":
        # Attention is the identity in the scalar graph the activation was solved on, so rescaling it
        # afterwards leaves the activation's targets unchanged.
        spec = sequence_lib.rescale_attention(spec, *activation.sequence_maps(), seq_len=input_shape[0])
    forward = builder.make_forward(spec, activation, init=init)
    return Model(name=name, spec=spec, activation=activation, init_name=init, num_classes=num_classes,
                 input_shape=input_shape, transformed=hk.transform_with_state(forward),
                 input_dtype="int32" if inputs == "tokens" else "float32")
