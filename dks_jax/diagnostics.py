"""Signal-propagation diagnostics at initialization: measured kernels against the kernel-map predictions.

The command line is ``python -m experiments.diagnose`` (or its shim ``python -m dks_jax.diagnose``):
  python -m experiments.diagnose --config=configs/default.py[:variant] [--config.field=value ...]
      [--pairs_per_value=16] [--num_inits=8] [--seed=0] [--num_sequences=8] [--sequence_inputs=distinct]

Sequence models (``nets.model_inputs(config.model) == 'tokens'``, the transformers) are diagnosed by
``dks_jax.sequence_diagnostics`` instead: kernel matrices over positions after every layer, predicted and
measured, and whether they collapse to rank one (``--num_sequences`` input sequences of ``config.seq_len``
tokens, ``--sequence_inputs`` 'distinct' or 'text').

The config's model is built (the same ``nets.build_model`` as training) and fed pairs of inputs with known
correlation ``c`` in {0, 0.3, 0.6, 0.9} and unit q (mean squared entry 1): real images of the config's
dataset, normalized, each pair mixed to exactly ``c`` (synthetic Gaussian inputs when the dataset cannot
be loaded, or when a per-location kernel cannot be set with a single input channel). After every top-level
layer of the model's layer specification, and at the output, it prints the predicted q and C values (the
activation's local maps composed through the kernel graph: ``graph.trace``) beside the measured ones.

Where the kernel lives: networks that flatten their input first (MLPs) see one kernel per example pair, so
pairs are mixed as whole vectors. Convolutional networks with Delta-initialized convolutions see one kernel
per location, so each pixel's channel vector is normalized and mixed; measured correlations are then
averaged over locations.

Measurements are averaged over ``--num_inits`` independent initializations. Kernel maps describe the
expectation over random weights; at finite width a single network's q performs a random walk in log q
(per-layer variance about ``Var[phi(z)^2] / E[phi(z)^2]^2 / width``: for TAT Leaky ReLU at width 256 and
depth 30, single networks deviate by 20 to 70 percent), and averaging over initializations is the only way
to measure the expectation. The tolerance of every layer is stated and has two parts: a base for the
systematic O(1/width) finite-width error (0.05 for c, 10 percent for q at widths >= 256, scaled by
``sqrt(256 / width)`` for narrower layers) plus three Monte Carlo standard errors of the measurement across
initializations. The last line gives the worst disagreement relative to its tolerance; the exit status is
1 when it exceeds it (and 2 when the model cannot be built). Batch-normalized models have no kernel map:
the tool says so and exits 0.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dks_jax import nets
from dks_jax.data import pln
from dks_jax.kernels import graph as g
from dks_jax.nets import initializers

C_VALUES = (0.0, 0.3, 0.6, 0.9)
REFERENCE_WIDTH = 256
BASE_C_TOLERANCE = 0.05
BASE_Q_TOLERANCE = 0.10
CONFIDENCE = 0.999  # two-sided, per quantity: the Monte Carlo part of each tolerance
FALLBACK_CHANNELS = 8

@dataclasses.dataclass
class LayerReport:
    """Predictions, measurements and tolerances after one top-level layer.

    Attributes:
      index: Position in the top-level ``Sequential``.
      label: Short description of the layer.
      width: Units per location (channels, or features of a vector).
      q_pred: Predicted q.
      q_meas: Measured q (mean over initializations).
      q_se: Standard error of ``q_meas`` across initializations.
      c_pred: Predicted C value for each input correlation in ``C_VALUES``.
      c_meas: Measured correlations (mean over initializations).
      c_se: Their standard errors.
      checked: Whether the layer counts for the verdict (pooling layers are reported only).
      q_tol: Tolerance of the relative q error.
      c_tol: Tolerance of the absolute c error (one per input correlation).
    """

    index: int
    label: str
    width: int
    q_pred: float
    q_meas: float
    q_se: float
    c_pred: np.ndarray
    c_meas: np.ndarray
    c_se: np.ndarray
    checked: bool = True
    q_tol: float = 0.0
    c_tol: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(len(C_VALUES)))

    @property
    def q_err(self) -> float:
        """Relative q error."""
        return abs(self.q_meas - self.q_pred) / max(abs(self.q_pred), 1e-12)

    @property
    def c_err(self) -> np.ndarray:
        """Absolute c errors."""
        return np.abs(self.c_meas - self.c_pred)

    @property
    def worst_ratio(self) -> float:
        """Largest error / tolerance of this layer (> 1 means a failure)."""
        return max(self.q_err / self.q_tol, float(np.max(self.c_err / self.c_tol)))


# ----------------------------------------------------------------------------------------------
# Inputs.


def mix_pairs(first: np.ndarray, second: np.ndarray, c_values: np.ndarray, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
    """Turns example pairs into pairs of exact correlation and unit q along the last axis.

    Each vector ``a`` (of ``first``) is scaled to mean square 1; the part of ``b`` orthogonal to ``a`` is
    scaled likewise to ``b_perp``; the pair becomes ``(a, c * a + sqrt(1 - c^2) * b_perp)``, whose cosine is
    exactly ``c`` and whose q values are exactly 1. Degenerate vectors (zero, or ``b`` parallel to ``a``)
    are replaced by Gaussian ones first.

    Args:
      first: ``[n, ..., d]`` array.
      second: Same shape.
      c_values: ``[n]`` target correlations.
      rng: Generator for the replacements.

    Returns:
      ``(a, b)`` float64 arrays of the input shape.
    """
    a, b = np.array(first, np.float64), np.array(second, np.float64)
    d = a.shape[-1]
    for _ in range(10):
        bad_a = np.sum(a * a, -1) < 1e-12 * d
        a[bad_a] = rng.standard_normal((int(bad_a.sum()), d))
        a_unit = a / np.sqrt(np.sum(a * a, -1, keepdims=True))
        perp = b - np.sum(a_unit * b, -1, keepdims=True) * a_unit
        bad_b = np.sum(perp * perp, -1) < 1e-6 * np.maximum(np.sum(b * b, -1), 1e-12)
        if not bad_a.any() and not bad_b.any():
            break
        b[bad_b] = rng.standard_normal((int(bad_b.sum()), d))
    a = a / np.sqrt(np.mean(a * a, -1, keepdims=True))
    perp = perp / np.sqrt(np.mean(perp * perp, -1, keepdims=True))
    c = np.asarray(c_values, np.float64).reshape((-1,) + (1,) * (a.ndim - 1))
    return a, c * a + np.sqrt(1.0 - c * c) * perp


def kernel_is_per_location(spec: g.Sequential) -> bool:
    """Whether the network's first kernel-bearing layer works location by location (conv, PLN, pool)."""
    for layer in spec.layers:
        if isinstance(layer, (g.Flatten, g.Dense, g.GlobalAvgPool)):
            return False
        if isinstance(layer, (g.Conv, g.PerLocationNorm, g.Pool, g.Sequential, g.PreActResidual,
                              g.WeightedSum)):
            return True
    return False


def load_images(config: Any, count: int, rng: np.random.Generator, print_fn: Callable[[str], None]
                ) -> tuple[np.ndarray | None, int, str]:
    """``count`` normalized float images of the config's dataset, its class count and a description.

    Returns ``(None, 10, reason)`` when the dataset cannot be loaded (the caller falls back to Gaussian
    inputs).
    """
    from dks_jax import data  # pylint: disable=g-import-not-at-top  (imported when images are needed)
    name = config.get("dataset", "")
    try:
        dataset = data.get_dataset(name, "train", data_dir=config.get("data_dir", "") or None)
        if dataset.image_shape is None:
            return None, dataset.num_classes, f"dataset {name!r} has images of varying sizes"
        indices = rng.choice(len(dataset), size=count, replace=len(dataset) < count)
        images, _ = dataset.read(np.sort(indices))
        images = images[rng.permutation(count)]
        standardize = config.get("normalize", "meanstd") == "meanstd"
        normalization = data.default_normalization(name, standardize=standardize)
        how = "mean/std normalized" if normalization.mean is not None else "scaled to [0, 1]"
        return (data.normalize_images(images, normalization), dataset.num_classes,
                f"{count} real images of {name!r} ({how})")
    except Exception as e:  # pylint: disable=broad-except  (any failure -> synthetic inputs, said aloud)
        print_fn(f"note: could not load dataset {name!r} ({type(e).__name__}: {str(e).splitlines()[0]}); "
                 "using Gaussian inputs.")
        return None, 10, f"dataset {name!r} unavailable"


# ----------------------------------------------------------------------------------------------
# Predictions.


def predict_q(node: g.Node, q: float, q_map: Callable[[float], float], gain: float) -> float:
    """q after ``node`` given q before it: local Q map at activations, ``gain`` at weight layers.

    The kernel graph (``graph.propagate``) treats weight layers as identities (q-preserving inits);
    ``gain`` covers He initialization (2), which doubles q at every dense / conv layer.
    """
    if isinstance(node, g.Act):
        return q_map(q)
    if isinstance(node, (g.Dense, g.Conv)):
        return gain * q
    if isinstance(node, g.PerLocationNorm):
        return 1.0
    if isinstance(node, g.Sequential):
        for layer in node.layers:
            q = predict_q(layer, q, q_map, gain)
        return q
    if isinstance(node, g.WeightedSum):
        return sum(w * w * predict_q(b, q, q_map, gain) for w, b in zip(node.weights, node.branches))
    if isinstance(node, g.PreActResidual):
        h = predict_q(node.pre, q, q_map, gain)
        res = predict_q(node.branch, h, q_map, gain)
        w2 = node.shortcut_weight**2
        if w2 == 0.0:
            return res
        short = q if node.projection is None else predict_q(node.projection, h, q_map, gain)
        return w2 * short + (1.0 - w2) * res
    return q  # pooling, flatten, dropout at init: identities on q in the kernel approximation


def is_pooling(node: g.Node) -> bool:
    """Pooling layers: the kernel graph treats them as identities, which holds only approximately."""
    return isinstance(node, (g.Pool, g.GlobalAvgPool))


def predictions(model: nets.Model, input_channels: int,
                measured: Sequence[tuple[float, np.ndarray]] | None = None
                ) -> list[tuple[float, np.ndarray]]:
    """Predicted ``(q, C values)`` after each top-level layer, for unit-q inputs of correlation C_VALUES.

    C values follow ``graph.propagate`` with the exact local C map. Two departures from the kernel graph:

    * a per-location normalization that appends a homogeneous coordinate ('const' or 'avg_q', which is 1
      for unit-q inputs) maps the correlation ``c`` of a unit-q pixel with ``C`` channels to
      ``(C c + 1) / (C + 1)`` (the kernel graph treats it as the identity);
    * after a top-level pooling layer, predictions restart from the ``measured`` values there. Max pooling
      raises q, and average pooling mixes locations whose mutual correlations (within an image) the
      per-location kernel does not track, so the graph's identity rule is only an approximation; what is
      checked downstream is whether the following layers follow the maps from what the pooling produced.

    Args:
      model: The model.
      input_channels: Channels (or features) of the input.
      measured: Measured ``(q, C values)`` per top-level layer, for re-anchoring after pooling.

    Returns:
      One ``(q, C values)`` per top-level layer.
    """
    activation, gain = model.activation, initializers.weight_gain(model.init_name)
    q_map = lambda q: float(activation.q_map(q))
    c_map = lambda c: np.asarray(activation.c_map(c))
    q, c, channels = 1.0, np.asarray(C_VALUES, np.float64), input_channels
    out = []
    for idx, layer in enumerate(model.spec.layers):
        if isinstance(layer, g.PerLocationNorm):
            c = np.asarray(g.pln_input_c_map(layer, c, channels), np.float64)
            q = 1.0
        else:
            c = np.asarray(g.propagate(layer, c, c_map), np.float64)
            q = predict_q(layer, q, q_map, gain)
        channels = _output_channels(layer, channels)
        out.append((q, c))
        if measured is not None and is_pooling(layer):
            q, c = float(measured[idx][0]), np.asarray(measured[idx][1], np.float64)
    return out


def _output_channels(node: g.Node, channels: int) -> int:
    last = None
    for sub in g.iter_nodes(node):
        if isinstance(sub, (g.Dense, g.Conv)):
            last = sub.features
    if isinstance(node, g.PerLocationNorm):
        return pln.output_channels(channels, node.homog_mode)
    return channels if last is None else last


def layer_label(node: g.Node) -> str:
    """A short description of a top-level layer."""
    if isinstance(node, g.Dense):
        return f"Dense {node.name or ''} ({node.features})".replace("  ", " ")
    if isinstance(node, g.Conv):
        return f"Conv {node.name or ''} {node.kernel_size}x{node.kernel_size}/{node.stride} ({node.features})"
    if isinstance(node, g.PerLocationNorm):
        return f"PLN ({node.homog_mode})"
    if isinstance(node, g.Pool):
        return f"{node.kind} pool {node.window}/{node.stride}"
    if isinstance(node, (g.Sequential, g.PreActResidual, g.WeightedSum)):
        acts = g.count_nonlinear_layers(node)
        return f"{type(node).__name__} {node.name or ''} ({acts} act)"
    return type(node).__name__


# ----------------------------------------------------------------------------------------------
# Measurement.


def _measure_fn(model: nets.Model, num_pairs: int):
    """A jitted ``(params, state, x) -> [(q, mean correlation per C value)]`` over the trace.

    Reducing inside the jit keeps the (possibly large) activations on the device.
    """

    def stats(params, state, x):
        (_, trace), _ = model.transformed.apply(params, state, None, x, is_training=False,
                                                return_trace=True)
        out = []
        for h in trace:
            h = h.astype(jnp.float32)
            q = jnp.mean(h * h)
            a, b = h[:num_pairs], h[num_pairs:]
            dot = jnp.sum(a * b, -1)
            norms = jnp.sqrt(jnp.sum(a * a, -1) * jnp.sum(b * b, -1))
            cos = dot / jnp.maximum(norms, 1e-30)
            cos = cos.reshape(len(C_VALUES), num_pairs // len(C_VALUES), -1)
            out.append((q, jnp.mean(cos, axis=(1, 2))))
        return out

    return jax.jit(stats)


def standard_errors_multiplier(num_inits: int) -> float:
    """Student-t quantile for a two-sided ``CONFIDENCE`` interval from ``num_inits`` samples.

    A normal quantile would understate the uncertainty of a standard error estimated from a handful of
    heavy-tailed (log-normal-like) q values; with one initialization there is no error estimate at all.
    """
    if num_inits < 2:
        return 0.0
    from scipy import stats  # pylint: disable=g-import-not-at-top
    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, num_inits - 1))


def run_diagnostics(config: Any, *, pairs_per_value: int = 16, num_inits: int = 16, seed: int = 0,
                    print_fn: Callable[[str], None] = print, num_sequences: int = 8,
                    sequence_inputs: str = "distinct") -> int:
    """Runs the diagnostics for ``config`` and prints the report.

    Args:
      config: An experiment config (``configs/*.py``).
      pairs_per_value: Input pairs per target correlation.
      num_inits: Independent initializations to average over (>= 2 for standard errors).
      seed: Seed of the initializations and of the input selection.
      print_fn: Where the report goes.
      num_sequences: Sequence models only: input sequences.
      sequence_inputs: Sequence models only: 'distinct' or 'text' (see ``sequence_diagnostics``).

    Returns:
      The exit status: 0 pass (or not applicable), 1 a disagreement beyond tolerance, 2 the model cannot
      be built.
    """
    if pairs_per_value < 1 or num_inits < 1:
        raise ValueError("pairs_per_value and num_inits must be >= 1.")
    if config.get("model") in nets.list_models() and nets.model_inputs(config.get("model")) == "tokens":
        from dks_jax import sequence_diagnostics  # pylint: disable=g-import-not-at-top
        return sequence_diagnostics.run_sequence_diagnostics(
            config, num_sequences=num_sequences, num_inits=num_inits, seed=seed, inputs=sequence_inputs,
            print_fn=print_fn)
    rng = np.random.default_rng(seed)
    num_pairs = pairs_per_value * len(C_VALUES)
    images, num_classes, source = load_images(config, 2 * num_pairs, rng, print_fn)
    shape = images.shape[1:] if images is not None else (
        (64, 64, 3) if config.get("stem", "") == "imagenet" and config.get("model") != "mlp" else (32, 32, 3))

    try:
        model = nets.build_model(config, num_classes, shape)
    except ValueError as e:
        print_fn(f"error: cannot build the model: {e}")
        return 2
    print_fn(f"model {model.name!r} ({model.spec.name}): {g.count_nonlinear_layers(model.spec)} nonlinear "
             f"layers, init {model.init_name!r}, activation {model.activation.name} "
             f"[{model.activation.method}] {model.activation.as_dict()}")
    if model.uses_batch_norm:
        print_fn("not applicable: the model has batch normalization, which has no kernel map (its "
                 "statistics depend on the batch); DKS/TAT diagnostics cover networks without "
                 "normalization layers.")
        return 0

    per_location = kernel_is_per_location(model.spec)
    if images is None or (per_location and shape[-1] < 2):
        if images is not None:
            print_fn(f"note: a per-location correlation cannot be set with {shape[-1]} input channel; "
                     f"using Gaussian inputs with {FALLBACK_CHANNELS} channels (this changes only the "
                     "first layer's fan-in).")
            shape = tuple(shape[:-1]) + (FALLBACK_CHANNELS,)
            model = nets.build_model(config, num_classes, shape)
        source = f"Gaussian inputs {shape}"
        images = rng.standard_normal((2 * num_pairs,) + tuple(shape))
    c_targets = np.repeat(np.asarray(C_VALUES), pairs_per_value)
    first, second = images[:num_pairs], images[num_pairs:]
    if not per_location:
        first, second = first.reshape(num_pairs, -1), second.reshape(num_pairs, -1)
    a, b = mix_pairs(first, second, c_targets, rng)
    x = jnp.asarray(np.concatenate([a, b]).reshape((2 * num_pairs,) + tuple(shape)), jnp.float32)
    print_fn(f"inputs: {source}; {pairs_per_value} pairs per c in {C_VALUES}, "
             f"{'per-location' if per_location else 'whole-vector'} kernels, unit q; "
             f"averaged over {num_inits} initializations.")

    if any(isinstance(n, g.Pool) and n.kind == "max" for n in g.iter_nodes(model.spec)):
        print_fn("note: max pooling passes skewed, mostly positive values to the next activation, whereas "
                 "the kernel maps assume Gaussian pre-activations: expect q and c to depart from the maps "
                 "just after it (predictions restart from the measurement at each pooling layer).")
    measure = _measure_fn(model, num_pairs)
    runs = []
    for i in range(num_inits):
        params, state = model.init(jax.random.PRNGKey(seed * 1000003 + i), x[:1])
        runs.append(jax.device_get(measure(params, state, x)))
    trace_shapes = jax.eval_shape(
        lambda p, s, x: model.transformed.apply(p, s, None, x, return_trace=True)[0][1],
        params, state, x[:1])
    widths = [int(t.shape[-1]) for t in trace_shapes]

    multiplier = standard_errors_multiplier(num_inits)
    q_runs = np.array([[float(layer[0]) for layer in run] for run in runs])  # [init, layer]
    c_runs = np.array([[np.asarray(layer[1], np.float64) for layer in run] for run in runs])
    means = [(q_runs[:, i].mean(), c_runs[:, i].mean(0)) for i in range(len(model.spec.layers))]
    reports = []
    for idx, (layer, (q_pred, c_pred), width) in enumerate(
            zip(model.spec.layers, predictions(model, shape[-1], means), widths)):
        qs, cs = q_runs[:, idx], c_runs[:, idx]
        se = lambda v: (np.std(v, axis=0, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else np.zeros_like(
            v[0])
        report = LayerReport(idx, layer_label(layer), width, q_pred, float(qs.mean()), float(se(qs)),
                             c_pred, cs.mean(0), se(cs), checked=not is_pooling(layer))
        scale = max(1.0, math.sqrt(REFERENCE_WIDTH / width))
        report.q_tol = BASE_Q_TOLERANCE * scale + multiplier * report.q_se / max(q_pred, 1e-12)
        report.c_tol = BASE_C_TOLERANCE * scale + multiplier * report.c_se
        reports.append(report)

    _print_table(reports, print_fn)
    checked = [r for r in reports if r.checked]
    worst = max(checked, key=lambda r: r.worst_ratio)
    q_worst = max(checked, key=lambda r: r.q_err / r.q_tol)
    c_worst = max(checked, key=lambda r: float(np.max(r.c_err / r.c_tol)))
    k = int(np.argmax(c_worst.c_err / c_worst.c_tol))
    status = "PASS" if worst.worst_ratio <= 1.0 else "FAIL"
    print_fn(f"worst disagreement: c {c_worst.c_err[k]:.4f} at layer {c_worst.index} (c_in={C_VALUES[k]}; "
             f"tolerance {c_worst.c_tol[k]:.4f}), q {100 * q_worst.q_err:.1f}% at layer {q_worst.index} "
             f"(tolerance {100 * q_worst.q_tol:.1f}%); tolerance = base (c {BASE_C_TOLERANCE}, q "
             f"{100 * BASE_Q_TOLERANCE:.0f}% at width >= {REFERENCE_WIDTH}, x sqrt({REFERENCE_WIDTH}/width) "
             f"below) + {multiplier:.2f} standard errors over {num_inits} inits (t quantile, "
             f"{100 * CONFIDENCE:g}% two-sided); worst error / "
             f"tolerance = {worst.worst_ratio:.2f} at layer {worst.index} -> {status}")
    return 0 if status == "PASS" else 1


def _print_table(reports: Sequence[LayerReport], print_fn: Callable[[str], None]) -> None:
    c_head = "  ".join(f"c{c:g}: pred/meas" for c in C_VALUES)
    print_fn(f"{'#':>3} {'layer':<34} {'width':>5} {'q pred':>7} {'q meas':>7} {'q err':>6} {'q tol':>6}  "
             f"{c_head}  {'c err':>6} {'c tol':>6}")
    for r in reports:
        cs = "  ".join(f"{p:.3f}/{m:.3f}".rjust(len(f'c{c:g}: pred/meas'))
                       for c, p, m in zip(C_VALUES, r.c_pred, r.c_meas))
        k = int(np.argmax(r.c_err / r.c_tol))
        if not r.checked:
            flag = "  (pooling: not checked; later predictions restart from here)"
        else:
            flag = "" if r.worst_ratio <= 1.0 else "  <-- beyond tolerance"
        print_fn(f"{r.index:>3} {r.label[:34]:<34} {r.width:>5} {r.q_pred:7.3f} {r.q_meas:7.3f} "
                 f"{100 * r.q_err:5.1f}% {100 * r.q_tol:5.1f}%  {cs}  {r.c_err[k]:6.3f} {r.c_tol[k]:6.3f}{flag}")
