"""The experiment config: one schema, config files, overrides, validation, description and comparison.

A config is a locked ``ml_collections.ConfigDict``. ``SCHEMA`` lists every field once, with its default,
a line on what it means and what it accepts; ``base_config()`` builds the config from it, and a config
file (``configs/*.py``) only overrides what differs. Settings that belong to one component sit in their
own section and are passed through to it untouched:

* ``optimizer``: ``name`` and one section per optimizer (``optimizer.sgd``, ``optimizer.adam``,
  ``optimizer.kfac``) holding that optimizer's keyword arguments (``dks_jax.optim``'s config dataclasses);
* ``schedule``: ``name``, ``warmup_epochs`` and per-schedule sections (``schedule.piecewise_constant``);
* ``dks`` / ``tat``: the transformation targets (``transforms.DKSTargets`` / ``TATTargets``);
* ``divergence``: when a finite but exploding loss counts as divergence.

Config files take one argument string after ``:``, parsed by ``parse_arg``:
``configs/mnist.py:arch=convnet,depth=50,tiny`` gives ``{"arch": "convnet", "depth": 50, "tiny": True}``.

This module needs only ``ml_collections``; the registries it validates names against (models, datasets,
activations, optimizers, schedules) are imported when a config is validated.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import inspect
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import ml_collections
from ml_collections import config_dict


class ConfigError(ValueError):
    """A config file, argument, override or field value is invalid (the message says which and why)."""


# ----------------------------------------------------------------------------------------------
# Checks: each returns an error text for a bad value, or None.


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def at_least(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if _num(v) and v >= low else f"must be a number >= {low:g}"


def greater_than(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if _num(v) and v > low else f"must be a number > {low:g}"


def in_range(low: float, high: float, *, low_open: bool = False, high_open: bool = True
             ) -> Callable[[Any], str | None]:
    """``low <= v < high`` (brackets as given)."""
    lo, hi = "(" if low_open else "[", ")" if high_open else "]"

    def check(v: Any) -> str | None:
        ok = _num(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
        return None if ok else f"must lie in {lo}{low:g}, {high:g}{hi}"

    return check


def optional(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    def wrapped(v: Any) -> str | None:
        if v is None:
            return None
        error = check(v)
        return error and f"{error} (or None)"

    return wrapped


def one_of(values: Iterable[Any] | Callable[[], Iterable[Any]]) -> Callable[[Any], str | None]:
    """The value must be one of ``values`` (a list, or a function giving it when checked)."""

    def check(v: Any) -> str | None:
        valid = list(values() if callable(values) else values)
        if v in valid:
            return None
        close = difflib.get_close_matches(str(v), [str(x) for x in valid], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"must be one of {', '.join(repr(x) for x in valid)}{hint}"

    return check


def fractions_increasing(v: Any) -> str | None:
    ok = isinstance(v, tuple) and all(_num(x) and 0 <= x <= 1 for x in v) and list(v) == sorted(v)
    return None if ok else "must be non-decreasing fractions of training in [0, 1]"


def positive_numbers(v: Any) -> str | None:
    ok = isinstance(v, tuple) and all(_num(x) and x > 0 for x in v)
    return None if ok else "must be positive numbers"


def unit_fraction(v: Any) -> str | None:
    """``1 / k`` for a whole k >= 1 (a stride through the batch)."""
    ok = _num(v) and 0 < v <= 1 and abs(round(1 / v) * v - 1) < 1e-6
    return None if ok else "must be 1/k for a whole k >= 1 (1, 0.5, 0.25, ...)"


# Registries, imported when a config is checked (not when this module is imported).
def _models() -> list[str]:
    from dks_jax import nets
    return nets.list_models()


def _datasets() -> list[str]:
    from dks_jax import data
    return data.list_datasets()


def _activations() -> list[str]:
    from dks_jax import activations
    return activations.list_activations()


def _methods() -> list[str]:
    from dks_jax import transforms
    return list(transforms.METHODS)


def _optimizers() -> list[str]:
    from dks_jax.optim import optimizers
    return optimizers.list_optimizers()


def _schedules() -> list[str]:
    from dks_jax.optim import schedules
    return schedules.list_schedules()


def _inits() -> list[str]:
    return ["", "orthogonal", "he_normal", "lecun_normal"]


# ----------------------------------------------------------------------------------------------
# The schema.


@dataclasses.dataclass(frozen=True)
class Field:
    """One config field.

    Attributes:
      path: Dotted path (``optimizer.kfac.damping``).
      default: Default value; its type is the field's type (None needs ``kind``).
      help: One line: what it means.
      check: Returns an error text for an invalid value, else None.
      resumable: A change of this field on resume only extends or observes the run (more epochs, other
        eval/log cadence, ...); any other change alters the trained state and is refused.
      kind: The type of a field whose default is None.
    """

    path: str
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None
    resumable: bool = False
    kind: type | None = None


SCHEMA: tuple[Field, ...] = (
    Field("seed", 0, "PRNG seed of initialization, data order, augmentation and dropout", at_least(0)),
    # Data.
    Field("dataset", "digits", "dataset name (dks_jax.data registry)", one_of(_datasets)),
    Field("data_dir", "", "where the data is read from; '' = $DKS_JAX_DATA_DIR, else ../shared/data",
          resumable=True),
    Field("validation_fraction", 0.0, "fraction of the train split held out as the validation split "
          "(periodic evaluation and sweeps then use it; 0 = none)", in_range(0.0, 1.0)),
    Field("validation_fold", 0, "which disjoint held-out slice of that size is the validation split "
          "(k-fold cross-validation: fraction 1/k, folds 0..k-1; a sweep averages over it like seeds)",
          at_least(0)),
    Field("augment", True, "the dataset's standard training augmentation (crops/flips) on or off"),
    Field("normalize", "meanstd", "input normalization: per-channel mean/std, or 'unit' ([0, 1])",
          one_of(["meanstd", "unit"])),
    Field("image_size", 224, "crop size of ImageNet-style datasets (pixels)", at_least(8)),
    Field("pln_mode", "", "per-location normalization of the input: '' off, or its homogeneous "
          "coordinate 'none' / 'const' / 'avg_q'", one_of(["", "none", "const", "avg_q"])),
    # Model.
    Field("model", "mlp", "network name (dks_jax.nets registry)", one_of(_models)),
    Field("depth", 30, "MLP/convnet: nonlinear layers; ResNets: 18, 34, 50, 101, 152 or 200", at_least(1)),
    Field("width", 256, "MLP units / convnet channels per layer", at_least(1)),
    Field("width_multiplier", 1.0, "ResNet channel multiplier", greater_than(0.0)),
    Field("stem", "small", "ResNet stem: 'small' (3x3, 28-32 px) or 'imagenet' (7x7/2 + max-pool)",
          one_of(["small", "imagenet"])),
    Field("shortcut_weight", 0.0, "tat_resnet, transformer.block='skips_only': weight w of the shortcut "
          "(residual: sqrt(1 - w^2))",
          in_range(0.0, 1.0)),
    Field("dropout_rate", 0.0, "dropout before the classifier", in_range(0.0, 1.0)),
    Field("init", "", "weight initializer; '' = the method's default (SUO/Delta for DKS/TAT/EOC)",
          one_of(_inits)),
    Field("seq_len", 64, "sequence models: tokens per training/evaluation window", at_least(1)),
    Field("transformer.num_heads", 4, "transformer: attention heads (must divide width)", at_least(1)),
    Field("transformer.mlp_ratio", 4, "transformer: MLP hidden units per feature", at_least(1)),
    Field("transformer.attention", "espa", "transformer: attention at initialization",
          one_of(["softmax", "espa", "uspa", "value_skipinit"])),
    Field("transformer.block", "vanilla", "transformer: 'vanilla' (no skips, no norm), 'norm_only', "
          "'skips_only' (shortcut_weight), 'pre_ln' (standard baseline)",
          one_of(["vanilla", "norm_only", "skips_only", "pre_ln"])),
    Field("transformer.causal", True, "transformer: causal (language-model) masking"),
    Field("transformer.positional", "none", "transformer: positional embedding",
          one_of(["none", "learned"])),
    Field("transformer.espa_gamma", 0.005, "E-SPA: final decay rate gamma_L of exp(-gamma |i - j|)",
          greater_than(0.0)),
    Field("transformer.uspa_rho", 0.8, "U-SPA: final off-diagonal correlation rho_L",
          in_range(0.0, 1.0, low_open=True)),
    Field("transformer.spa_rescale", "target", "E-SPA/U-SPA row rescaling: 'target' (the construction) or "
          "'propagated' (unit q at every position)", one_of(["target", "propagated"])),
    Field("transformer.value_skip_alpha", 1.0, "Value-SkipInit: initial identity weight alpha"),
    Field("transformer.value_skip_beta", 0.0, "Value-SkipInit: initial attention weight beta"),
    # Activation transformation.
    Field("activation", "leaky_relu", "activation family (dks_jax.list_activations())",
          one_of(_activations)),
    Field("method", "TAT", "activation transformation", one_of(_methods)),
    Field("dks.c_slope_1_target", 1.5, "DKS zeta: the network's maximal C'(1)", greater_than(1.0)),
    Field("dks.local_q_slope_target", 1.0, "DKS: every layer's Q'(1)", greater_than(0.0)),
    Field("tat.c_val_0_target", 0.9, "TAT eta (Leaky ReLU): the network's maximal C(0)",
          in_range(0.0, 1.0, low_open=True)),
    Field("tat.c_curve_target", 0.3, "TAT tau (smooth activations): the network's maximal C''(1)",
          greater_than(0.0)),
    # Optimization.
    Field("optimizer.name", "sgd", "optimizer; its section optimizer.<name> is passed to it as is",
          one_of(_optimizers)),
    Field("optimizer.sgd.momentum", 0.9, "SGD momentum (0 = plain SGD)", in_range(0.0, 1.0)),
    Field("optimizer.sgd.nesterov", True, "SGD: Nesterov momentum (else heavy ball)"),
    Field("optimizer.adam.b1", 0.9, "Adam first-moment decay", in_range(0.0, 1.0)),
    Field("optimizer.adam.b2", 0.999, "Adam second-moment decay", in_range(0.0, 1.0)),
    Field("optimizer.adam.eps", 1e-8, "Adam denominator epsilon", greater_than(0.0)),
    Field("optimizer.kfac.damping", 1e-3, "K-FAC damping (fixed)", greater_than(0.0)),
    Field("optimizer.kfac.momentum", 0.9, "K-FAC momentum (fixed)", in_range(0.0, 1.0)),
    Field("optimizer.kfac.curvature_ema", 0.95, "K-FAC: decay of the curvature factors' moving average",
          in_range(0.0, 1.0)),
    Field("optimizer.kfac.inverse_update_period", 5, "K-FAC: steps between factor inversions",
          at_least(1)),
    Field("optimizer.kfac.curvature_update_period", 1, "K-FAC: steps between curvature estimates",
          at_least(1)),
    Field("optimizer.kfac.norm_constraint", 1e-3, "K-FAC: bound on the update's curvature norm "
          "(None = unbounded)", optional(greater_than(0.0)), kind=float),
    Field("optimizer.kfac.num_burnin_steps", 5, "K-FAC: curvature-only passes before step 0",
          at_least(0)),
    Field("optimizer.kfac.curvature_batch_fraction", 0.25, "K-FAC: fraction of the batch (1/k, every "
          "k-th example) the curvature is estimated on", unit_fraction),
    Field("optimizer.kfac.conv_block", "kron", "K-FAC block of conv layers: kron (Kronecker-factored) "
          "or diag", one_of(("kron", "diag"))),
    Field("optimizer.kfac.dense_block", "kron", "K-FAC block of dense layers: kron or diag",
          one_of(("kron", "diag"))),
    Field("optimizer.kfac.conv_factor_stats", "patches", "K-FAC conv input factor: patches (explicit "
          "patches, one matmul) or kfac_jax (its convolution loop)", one_of(("patches", "kfac_jax"))),
    Field("optimizer.kfac.inverse_method", "cholesky", "K-FAC factor inverses: cholesky or lu",
          one_of(("cholesky", "lu"))),
    Field("learning_rate", 0.1, "peak learning rate (the schedule scales it)", greater_than(0.0)),
    Field("weight_decay", 0.0, "L2 coefficient on weights (biases excluded), all optimizers",
          at_least(0.0)),
    Field("label_smoothing", 0.0, "label smoothing of the cross-entropy", in_range(0.0, 1.0)),
    Field("schedule.name", "cosine", "learning-rate schedule; its section schedule.<name> is passed to "
          "it as is", one_of(_schedules)),
    Field("schedule.warmup_epochs", 1.0, "linear warm-up from 0 to the peak rate (epochs)", at_least(0.0)),
    Field("schedule.piecewise_constant.boundaries", (0.5, 0.75), "fractions of training where the rate "
          "drops", fractions_increasing),
    Field("schedule.piecewise_constant.factors", (0.1, 0.1), "factor applied at each boundary",
          positive_numbers),
    Field("batch_size", 128, "global batch size (split over devices and processes)", at_least(1)),
    Field("eval_batch_size", 0, "examples (images or text windows) per evaluation batch; 0 = batch_size. "
          "Evaluation sums are exact, so it changes speed, not results", at_least(0), resumable=True),
    Field("num_epochs", 10.0, "training length in epochs (the schedule spans them)", greater_than(0.0),
          resumable=True),
    Field("max_steps", 0, "stop after this many steps (0 = train num_epochs); the schedule is unchanged",
          at_least(0), resumable=True),
    # Divergence: NaN/Inf always; a finite blow-up by these thresholds.
    Field("divergence.loss_factor", 3.0, "diverged when the mean training loss over the last "
          "window_steps steps exceeds loss_factor x the mean over the run's first min(10, window_steps)",
          greater_than(1.0), resumable=True),
    Field("divergence.window_steps", 50, "steps the blow-up test averages over", at_least(1),
          resumable=True),
    # Bookkeeping.
    Field("eval_every_steps", 0, "steps between evaluations (0 = once per epoch)", at_least(0),
          resumable=True),
    Field("checkpoint_every_steps", 0, "steps between checkpoints (0 = once per epoch)", at_least(0),
          resumable=True),
    Field("keep_checkpoints", 3, "newest checkpoints kept", at_least(1), resumable=True),
    Field("log_every_steps", 20, "steps between logged training metrics", at_least(1), resumable=True),
)

_BY_PATH = {f.path: f for f in SCHEMA}


def register_fields(*fields: Field) -> None:
    """Adds fields to the schema (e.g. for a model registered outside this package).

    Registering the same field again is a no-op; a different field at a taken path is an error.
    """
    for f in fields:
        existing = _BY_PATH.get(f.path)
        if existing is not None and existing != f:
            raise ValueError(f"config field {f.path!r} is already registered differently.")
        _BY_PATH[f.path] = f


def schema() -> list[Field]:
    """Every field, built-in and registered, in definition order."""
    return list(_BY_PATH.values())


def _set_path(c: ml_collections.ConfigDict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = c
    for name in parents:
        if name not in node:
            node[name] = ml_collections.ConfigDict()
        node = node[name]
    node[leaf] = value


def get_path(c: Any, path: str) -> Any:
    """``c.a.b`` for ``path`` 'a.b' (KeyError naming the path when absent)."""
    node = c
    for name in path.split("."):
        try:
            node = node[name]
        except (KeyError, TypeError):
            raise KeyError(path) from None
    return node


def set_fields(config: ml_collections.ConfigDict, fields: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Sets ``{dotted path: value}`` in place (no parsing, no validation; ``validate`` checks later).

    Raises:
      ConfigError: A path that is not a field of ``config``.
    """
    for path, value in fields.items():
        *parents, leaf = path.split(".")
        try:
            node = get_path(config, ".".join(parents)) if parents else config
        except KeyError:
            node = None
        if node is None or leaf not in node:
            close = difflib.get_close_matches(path, list(flatten(config)), n=1)
            raise ConfigError(f"config.{path} is not a config field"
                              + (f" (did you mean {close[0]}?)" if close else "") + ".")
        node[leaf] = value
    return config


def base_config() -> ml_collections.ConfigDict:
    """Every field of ``SCHEMA`` at its default, locked (fields can change, none can be added)."""
    c = ml_collections.ConfigDict()
    for f in schema():
        value = f.default
        if f.kind is not None:
            value = config_dict.FieldReference(f.default, field_type=f.kind)
        _set_path(c, f.path, value)
    c.lock()
    return c


def flatten(c: Any, prefix: str = "") -> dict[str, Any]:
    """``{dotted path: value}`` of a (nested) config or dict."""
    out: dict[str, Any] = {}
    items = c.items() if hasattr(c, "items") else []
    for key, value in items:
        path = f"{prefix}{key}"
        if isinstance(value, (ml_collections.ConfigDict, dict)):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def validate(c: Any) -> None:
    """Checks every field's type and range; raises ``ConfigError`` naming the fields that fail."""
    errors = []
    values = flatten(c)
    for path, value in values.items():
        f = _BY_PATH.get(path)
        if f is None:
            close = difflib.get_close_matches(path, list(_BY_PATH), n=1)
            errors.append(f"config.{path} is not a known field"
                          + (f" (did you mean {close[0]}?)" if close else ""))
            continue
        kind = f.kind or type(f.default)
        if value is not None and not isinstance(value, kind) and not (
                kind is float and isinstance(value, int) and not isinstance(value, bool)):
            errors.append(f"config.{path}={value!r} must be {_a(kind)}")
            continue
        error = f.check(value) if f.check else None
        if error:
            errors.append(f"config.{path}={value!r} {error}")
    missing = [f.path for f in schema() if f.path not in values]
    if missing:
        errors.append(f"missing fields {missing} (build configs from configlib.base_config())")
    if errors:
        raise ConfigError("; ".join(errors) + ".")


# ----------------------------------------------------------------------------------------------
# Config files, their argument, and command-line overrides.


def parse_arg(arg: str | None, **defaults: Any) -> dict[str, Any]:
    """Parses a config file's ``"a=1,b=x,flag"`` argument, casting values to the type of their default.

    Args:
      arg: The text after ``:`` in ``--config=file.py:arg`` (may be empty or None).
      **defaults: Every accepted key with its default value (its type is the value's type).

    Returns:
      The options, defaults filled in.

    Raises:
      ConfigError: Unknown keys (with the valid ones and the closest match) or values of the wrong type.
    """
    options = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            raise ConfigError(f"unknown config option {key!r}" + (f" (did you mean {close[0]!r}?)"
                                                                  if close else "")
                              + f"; valid options: {', '.join(sorted(defaults))}.")
        kind = type(defaults[key])
        if not sep:
            if kind is not bool:
                raise ConfigError(f"config option {key!r} needs a value ({key}=...).")
            options[key] = True
        elif kind is bool:
            options[key] = _parse_bool(value, f"config option {key}")
        else:
            try:
                options[key] = kind(value.strip())
            except ValueError:
                raise ConfigError(f"config option {key}={value!r} must be {_a(kind)}.") from None
    return options


def _a(kind: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "a boolean",
            tuple: "a tuple"}.get(kind, f"a {kind.__name__}")


def _parse_bool(text: str, what: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{what}={text!r} must be a boolean (true/false).")


def load_config_file(spec: str, *, validate_fields: bool = True) -> ml_collections.ConfigDict:
    """Loads ``path/to/config.py[:arg]`` by calling the file's ``get_config(arg)``.

    Raises:
      ConfigError: The file does not exist or has no ``get_config``, or its argument is invalid.
    """
    path, _, arg = spec.partition(":")
    file = Path(path)
    if not file.is_file():
        siblings = sorted(p.name for p in file.parent.glob("*.py")) if file.parent.is_dir() else []
        hint = f"; configs in {file.parent}/: {', '.join(siblings)}" if siblings else ""
        raise ConfigError(f"config file {path!r} does not exist{hint}.")
    module_name = f"_dks_jax_config_{abs(hash(str(file.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    get_config = getattr(module, "get_config", None)
    if get_config is None:
        raise ConfigError(f"config file {path!r} defines no get_config(arg).")
    try:
        takes_arg = bool(inspect.signature(get_config).parameters)
        if arg and not takes_arg:
            raise ConfigError(f"config file {path!r} takes no argument, got {arg!r}.")
        config = get_config(arg) if takes_arg else get_config()
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    if validate_fields:
        validate(config)
    return config


def parse_override(config: ml_collections.ConfigDict, path: str, text: str) -> Any:
    """The value of ``--config.<path>=<text>`` in the type of the field it overrides.

    Raises:
      ConfigError: Unknown field (with the closest match) or a value of the wrong type.
    """
    try:
        current = get_path(config, path)
    except KeyError:
        close = difflib.get_close_matches(path, list(flatten(config)), n=1)
        raise ConfigError(f"--config.{path}: no such config field"
                          + (f"; did you mean {close[0]}?" if close else "")
                          + " (list them with --describe).") from None
    f = _BY_PATH.get(path)
    kind = (f.kind or type(f.default)) if f else type(current)
    if text.strip().lower() == "none" and f is not None and f.kind is not None:
        return None
    what = f"--config.{path}"
    if kind is bool:
        return _parse_bool(text, what)
    if kind is tuple:
        items = [t for t in text.strip("()[] ").split(",") if t.strip()]
        sample = (f.default if f else current) or (0.0,)
        try:
            return tuple(type(sample[0])(t.strip()) for t in items)
        except ValueError:
            raise ConfigError(f"{what}={text!r} must be a comma-separated list, each {_a(type(sample[0]))}."
                              ) from None
    if kind is ml_collections.ConfigDict:
        raise ConfigError(f"{what} is a section; set its fields ({what}.<field>=...).")
    try:
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        return kind(text)
    except ValueError:
        raise ConfigError(f"{what}={text!r} must be {_a(kind)}.") from None


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
                    ) -> ml_collections.ConfigDict:
    """Sets ``{dotted path: value}`` and validates; string values are parsed in the field's type."""
    parsed = {p: parse_override(config, p, v) if isinstance(v, str) else v for p, v in overrides.items()}
    try:
        set_fields(config, parsed)
    except (TypeError, AttributeError) as err:
        raise ConfigError(f"--config overrides: {err}") from None
    validate(config)
    return config


# ----------------------------------------------------------------------------------------------
# Describing and comparing configs.


def describe(config: Any) -> str:
    """A markdown table of every field (schema order): path, value, and what it means and accepts."""
    values = flatten(config)
    order = [f.path for f in schema() if f.path in values] + sorted(set(values) - set(_BY_PATH))
    rows = ["| field | value | meaning (accepts) |", "|---|---|---|"]
    for path in order:
        f = _BY_PATH.get(path)
        accepts = ""
        if f is not None and f.check is not None:
            rule = f.check(object())  # every check rejects this; its message says what it accepts
            accepts = f" ({rule})" if rule else ""
        rows.append(f"| {path} | {values[path]!r} | {f.help if f else ''}{accepts} |")
    return "\n".join(rows)


def to_json_dict(config: Any) -> dict[str, Any]:
    """The config as plain JSON-compatible nested dicts (tuples become lists)."""
    return json.loads(json.dumps(config.to_dict() if hasattr(config, "to_dict") else dict(config),
                                 default=list))


def changed_fields(old: Mapping[str, Any], new: Any) -> dict[str, tuple[Any, Any]]:
    """``{path: (old, new)}`` of the fields that differ between a stored config (JSON) and ``new``.

    A field the stored config lacks because the schema gained it later is no change while ``new`` holds
    its default (the run was made with that behaviour), so adding a field never invalidates old runs.
    """
    old_flat, new_flat = flatten(old), flatten(to_json_dict(new))
    changed = {}
    for p in sorted(set(old_flat) | set(new_flat)):
        if old_flat.get(p) == new_flat.get(p):
            continue
        if p not in old_flat and p in _BY_PATH and new_flat.get(p) == json.loads(json.dumps(_BY_PATH[p].default)):
            continue
        changed[p] = (old_flat.get(p), new_flat.get(p))
    return changed


def is_resumable_change(path: str) -> bool:
    """Whether changing ``path`` on resume keeps the trained state valid (see ``Field.resumable``)."""
    f = _BY_PATH.get(path)
    return bool(f and f.resumable)


def section(config: Any, path: str) -> dict[str, Any]:
    """A config section as a plain dict of keyword arguments (``{}`` when the section is absent)."""
    try:
        node = get_path(config, path)
    except KeyError:
        return {}
    return dict(node.to_dict() if hasattr(node, "to_dict") else node)


def tiny(c: ml_collections.ConfigDict, *, depth: int | None = None) -> ml_collections.ConfigDict:
    """Shrinks a config to a few real CPU steps (used by the tests for every config)."""
    if depth is not None:
        c.depth = depth
    c.width = min(c.width, 32)
    c.width_multiplier = min(c.width_multiplier, 1 / 16)
    c.batch_size = 16
    c.max_steps = 3
    c.log_every_steps = 1
    c.optimizer.kfac.num_burnin_steps = min(c.optimizer.kfac.num_burnin_steps, 1)
    # Every step then traces to the same K-FAC program: one compilation instead of two.
    c.optimizer.kfac.inverse_update_period = 1
    c.image_size = min(c.image_size, 64)
    return c


def config_files(directory: str | os.PathLike) -> list[str]:
    """The config files in ``directory`` (``*.py`` with a ``get_config``), sorted."""
    return sorted(p.name for p in Path(directory).glob("*.py")
                  if "def get_config" in p.read_text(encoding="utf-8"))
