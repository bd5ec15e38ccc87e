"""Signal propagation at initialization in sequence models: measured kernel matrices over positions vs predicted.

For a transformer (``nets.model_inputs(config.model) == 'tokens'``) the kernel at one input sequence is a
``[T, T]`` matrix (``K[i, j]`` = mean over features of ``h_i * h_j``): its diagonal holds the per-position
q values and its normalized off-diagonal the correlations between positions. After every top-level layer of
the model's layer specification this module compares the kernels measured on the real Haiku model
(averaged over sequences and independent initializations) with the prediction of
``dks_jax.kernels.sequence`` from the input tokens (``input_kernel``: 1 for equal tokens, 0 otherwise), and
reports how far each is from rank collapse (all positions identical: mean correlation 1, smallest
eigenvalue of the correlation matrix 0).

Inputs: 'distinct' (every sequence a random draw of T distinct tokens, so the input kernel is the identity:
the setting of the E-SPA / U-SPA constructions) or 'text' (windows of the config's text dataset).

Tolerances, as in ``dks_jax.diagnose``: a base for the O(1/width) finite-width error (0.05 for correlations,
10 percent for q at width >= 256, scaled by ``sqrt(256 / width)`` below) plus a Student-t multiple of the
standard error across initializations. ``run_sequence_diagnostics`` prints the table and returns the exit
status (0 agreement, 1 a disagreement beyond tolerance, 2 the model cannot be built).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dks_jax import nets
from dks_jax.kernels import graph as g
from dks_jax.kernels import sequence

REFERENCE_WIDTH = 256
BASE_C_TOLERANCE = 0.05
BASE_Q_TOLERANCE = 0.10
CONFIDENCE = 0.999
# Smallest eigenvalue of the correlation matrix below which the kernel counts as rank-collapsed (float32
# measurements of identical positions land near 1e-7; E-SPA's targets keep it near gamma / 2).
RANK_COLLAPSE_MIN_EIG = 1e-6
INPUT_MODES = ("distinct", "text")
DEFAULT_VOCAB = 97  # the character vocabulary of 'cpython_chars', for inputs='distinct


@dataclasses.dataclass
class SequenceLayerReport:
    """Predicted and measured kernels after one top-level layer.

    Attributes:
      index: Position in the top-level ``Sequential``.
      label: Short description.
      width: Features of the layer's output.
      q_pred: Predicted per-position q ``[T]`` (mean over sequences).
      q_meas: Measured per-position q ``[T]`` (mean over sequences and initializations).
      q_se: Standard error of ``q_meas`` across initializations.
      c_pred: Predicted correlation matrix ``[T, T]`` (mean over sequences).
      c_meas: Measured correlation matrix (mean over sequences and initializations).
      c_se: Its standard errors.
      rank_pred: ``sequence.rank_statistics`` of the predicted kernels (mean over sequences).
      rank_meas: The same of the measured kernels.
      q_tol: Tolerance of the relative q error.
      c_tol: Tolerance of the absolute correlation errors ``[T, T]``.
    """

    index: int
    label: str
    width: int
    q_pred: np.ndarray
    q_meas: np.ndarray
    q_se: np.ndarray
    c_pred: np.ndarray
    c_meas: np.ndarray
    c_se: np.ndarray
    rank_pred: dict[str, float]
    rank_meas: dict[str, float]
    q_tol: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    c_tol: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))

    @property
    def q_err(self) -> np.ndarray:
        """Relative q error per position."""
        return np.abs(self.q_meas - self.q_pred) / np.maximum(np.abs(self.q_pred), 1e-12)

    @property
    def c_err(self) -> np.ndarray:
        """Absolute correlation errors."""
        return np.abs(self.c_meas - self.c_pred)

    @property
    def worst_ratio(self) -> float:
        """Largest error / tolerance (> 1 is a failure)."""
        return max(float(np.max(self.q_err / self.q_tol)), float(np.max(self.c_err / self.c_tol)))

    @property
    def collapsed_pred(self) -> bool:
        return self.rank_pred["min_eig"] < RANK_COLLAPSE_MIN_EIG

    @property
    def collapsed_meas(self) -> bool:
        return self.rank_meas["min_eig"] < RANK_COLLAPSE_MIN_EIG


def distinct_tokens(vocab_size: int, seq_len: int, num_sequences: int, rng: np.random.Generator
                    ) -> np.ndarray:
    """``[num_sequences, seq_len]`` int32 sequences of distinct tokens (input kernel = identity)."""
    if seq_len > vocab_size:
        raise ValueError(f"distinct tokens: seq_len {seq_len} exceeds the vocabulary ({vocab_size}).")
    return np.stack([rng.choice(vocab_size, seq_len, replace=False)
                     for _ in range(num_sequences)]).astype(np.int32)


def text_tokens(dataset_name: str, seq_len: int, num_sequences: int, seed: int,
                data_dir: str | None = None) -> np.ndarray:
    """``[num_sequences, seq_len]`` windows of the test split of a registered text dataset."""
    from dks_jax import data  # pylint: disable=g-import-not-at-top  (keeps this module light)
    dataset = data.get_dataset(dataset_name, "test", data_dir=data_dir)
    batch = data.text.train_batch(dataset, 0, global_batch_size=num_sequences, seq_len=seq_len, seed=seed)
    return batch["tokens"]


def _embed_node(model: nets.Model) -> g.Embed:
    first = model.spec.layers[0]
    if not isinstance(first, g.Embed):
        raise ValueError(f"model {model.name!r} does not start with an Embed layer; it is not a sequence "
                         "model.")
    return first


def predict_kernels(model: nets.Model, tokens: np.ndarray) -> list[np.ndarray]:
    """Predicted kernel matrices ``[B, T, T]`` after each top-level layer, for int ``tokens`` ``[B, T]``."""
    k0 = sequence.input_kernel(np.asarray(tokens), _embed_node(model))
    q_map, c_map = model.activation.sequence_maps()
    return sequence.trace(model.spec, k0, q_map, c_map)


def _measure_fn(model: nets.Model):
    """Jitted ``(params, state, tokens) -> [kernels [B, T, T]]`` over the trace (reduced on device)."""

    def kernels(params, state, tokens):
        (_, trace), _ = model.transformed.apply(params, state, None, tokens, is_training=False,
                                                return_trace=True)
        out = []
        for h in trace:
            h = h.astype(jnp.float32)
            out.append(jnp.einsum("btd,bsd->bts", h, h) / h.shape[-1])
        return out

    return jax.jit(kernels)


def measure_kernels(model: nets.Model, tokens: np.ndarray, num_inits: int, seed: int = 0
                    ) -> tuple[list[np.ndarray], list[int]]:
    """Measured kernels per top-level layer, ``[num_inits, B, T, T]`` each, and the layer widths."""
    tokens = jnp.asarray(tokens, jnp.int32)
    measure = _measure_fn(model)
    runs = []
    for i in range(num_inits):
        params, state = model.init(jax.random.PRNGKey(seed * 1000003 + i), tokens[:1])
        runs.append([np.asarray(k, np.float64) for k in jax.device_get(measure(params, state, tokens))])
    shapes = jax.eval_shape(lambda p, s, x: model.transformed.apply(p, s, None, x, return_trace=True)[0][1],
                            params, state, tokens[:1])
    return [np.stack([run[i] for run in runs]) for i in range(len(runs[0]))], [int(s.shape[-1])
                                                                               for s in shapes]


def _rank_means(kernels: np.ndarray) -> dict[str, float]:
    stats = sequence.rank_statistics(kernels)
    return {k: float(np.mean(v)) for k, v in stats.items()}


def _t_multiplier(num_inits: int) -> float:
    if num_inits < 2:
        return 0.0
    from scipy import stats  # pylint: disable=g-import-not-at-top
    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, num_inits - 1))


def layer_label(node: g.Node) -> str:
    """A short description of a top-level layer of a sequence model."""
    if isinstance(node, g.Embed):
        return f"Embed ({node.vocab_size} -> {node.features}, pos {node.positional})"
    if isinstance(node, g.Attention):
        skip = f" vskip{node.value_skip}" if node.value_skip else ""
        return f"Attention {node.name or ''} {node.kind}{skip}"
    if isinstance(node, g.Dense):
        return f"Dense {node.name or ''} ({node.features})"
    if isinstance(node, (g.Sequential, g.WeightedSum)):
        return f"{type(node).__name__} {node.name or ''} ({g.count_nonlinear_layers(node)} act)"
    return type(node).__name__


def compare(model: nets.Model, tokens: np.ndarray, *, num_inits: int = 4, seed: int = 0
            ) -> list[SequenceLayerReport]:
    """Measured vs predicted kernels of ``model`` at initialization on ``tokens``, per top-level layer.

    Args:
      model: A sequence model (``nets.build_model`` of a token model) without batch normalization.
      tokens: int ``[B, T]`` input sequences.
      num_inits: Independent initializations to average over.
      seed: Seed of the initializations.

    Returns:
      One report per top-level layer, with its tolerances set.
    """
    predicted = predict_kernels(model, tokens)
    measured, widths = measure_kernels(model, tokens, num_inits, seed)
    multiplier = _t_multiplier(num_inits)
    reports = []
    for idx, (layer, pred, meas, width) in enumerate(zip(model.spec.layers, predicted, measured, widths)):
        q_runs = np.mean(np.diagonal(meas, axis1=-2, axis2=-1), axis=1)  # [init, T]
        c_runs = np.mean(sequence.normalize(meas), axis=1)  # [init, T, T]
        se = lambda v: (np.std(v, axis=0, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else np.zeros_like(v[0])
        q_pred = np.mean(np.diagonal(pred, axis1=-2, axis2=-1), axis=0)
        report = SequenceLayerReport(
            idx, layer_label(layer), width, q_pred, q_runs.mean(0), se(q_runs),
            np.mean(sequence.normalize(pred), axis=0), c_runs.mean(0), se(c_runs),
            _rank_means(pred), _rank_means(meas.reshape((-1,) + meas.shape[-2:])))
        scale = max(1.0, math.sqrt(REFERENCE_WIDTH / width))
        report.q_tol = BASE_Q_TOLERANCE * scale + multiplier * report.q_se / np.maximum(q_pred, 1e-12)
        report.c_tol = BASE_C_TOLERANCE * scale + multiplier * report.c_se
        reports.append(report)
    return reports


def format_reports(reports: Sequence[SequenceLayerReport]) -> list[str]:
    """The report table, one line per layer."""
    lines = [f"{'#':>3} {'layer':<38} {'width':>5} {'q pred':>7} {'q meas':>7} {'q err':>6} {'q tol':>6} "
             f"{'corr pred':>9} {'corr meas':>9} {'c err':>6} {'c tol':>6} {'min eig pred/meas':>19} "
             f"{'eff rank pred/meas':>19}"]
    for r in reports:
        k = np.unravel_index(np.argmax(r.c_err / r.c_tol), r.c_err.shape)
        j = int(np.argmax(r.q_err / r.q_tol))
        flag = "" if r.worst_ratio <= 1.0 else "  <-- beyond tolerance"
        if r.collapsed_meas or r.collapsed_pred:
            flag += "  rank collapse"
        mean_off = lambda c: float(sequence.mean_off_diagonal(c))
        lines.append(
            f"{r.index:>3} {r.label[:38]:<38} {r.width:>5} {np.mean(r.q_pred):7.3f} {np.mean(r.q_meas):7.3f} "
            f"{100 * r.q_err[j]:5.1f}% {100 * r.q_tol[j]:5.1f}% {mean_off(r.c_pred):9.4f} "
            f"{mean_off(r.c_meas):9.4f} {r.c_err[k]:6.3f} {r.c_tol[k]:6.3f} "
            f"{r.rank_pred['min_eig']:9.2e}/{r.rank_meas['min_eig']:9.2e} "
            f"{r.rank_pred['effective_rank']:9.2f}/{r.rank_meas['effective_rank']:9.2f}{flag}")
    return lines


def verdict(reports: Sequence[SequenceLayerReport]) -> tuple[int, str]:
    """``(exit status, last line)`` of a comparison: 0 when every layer is within tolerance."""
    worst = max(reports, key=lambda r: r.worst_ratio)
    last = reports[-2] if len(reports) > 1 else reports[-1]  # the last hidden layer (before the logits)
    status = "PASS" if worst.worst_ratio <= 1.0 else "FAIL"
    collapse = ("rank collapse at the last hidden layer (predicted and measured)"
                if last.collapsed_pred and last.collapsed_meas else
                "no rank collapse at the last hidden layer" if not (last.collapsed_pred or last.collapsed_meas)
                else "rank collapse at the last hidden layer: predicted "
                     f"{last.collapsed_pred}, measured {last.collapsed_meas}")
    line = (f"{collapse} (min eig of the correlation matrix {last.rank_pred['min_eig']:.2e} predicted, "
            f"{last.rank_meas['min_eig']:.2e} measured; threshold {RANK_COLLAPSE_MIN_EIG:g}); worst error / "
            f"tolerance = {worst.worst_ratio:.2f} at layer {worst.index} -> {status}")
    return (0 if status == "PASS" else 1), line


def run_sequence_diagnostics(config: Any, *, num_sequences: int = 8, num_inits: int = 4, seed: int = 0,
                             inputs: str = "distinct", print_fn: Callable[[str], None] = print) -> int:
    """Builds ``config``'s sequence model, compares kernels at initialization and prints the report.

    Args:
      config: An experiment config with a token model (``model``, the transformer fields, ``seq_len``
        (default 64), the activation/method fields, and ``dataset`` for ``inputs='text'``). With
        'distinct' inputs the model's vocabulary is ``max(seq_len, DEFAULT_VOCAB)``.
      num_sequences: Input sequences.
      num_inits: Independent initializations.
      seed: Seed of the inputs and initializations.
      inputs: One of ``INPUT_MODES``.
      print_fn: Where the report goes.

    Returns:
      Exit status: 0 agreement, 1 disagreement beyond tolerance, 2 the model cannot be built.
    """
    if inputs not in INPUT_MODES:
        raise ValueError(f"inputs must be one of {INPUT_MODES}, got {inputs!r}.")
    if num_sequences < 1 or num_inits < 1:
        raise ValueError("num_sequences and num_inits must be >= 1.")
    get = lambda key, default: config.get(key, default) if hasattr(config, "get") else getattr(config, key,
                                                                                               default)
    seq_len = int(get("seq_len", 64))
    rng = np.random.default_rng(seed)
    vocab, source = None, ""
    if inputs == "text":
        from dks_jax import data  # pylint: disable=g-import-not-at-top
        name = get("dataset", "cpython_chars")
        try:
            tokens = text_tokens(name, seq_len, num_sequences, seed, get("data_dir", "") or None)
            vocab = data.get_dataset(name, "test", data_dir=get("data_dir", "") or None).num_classes
            source = f"{num_sequences} windows of {name!r} (test split)"
        except Exception as e:  # pylint: disable=broad-except  (fall back to distinct tokens, said aloud)
            print_fn(f"note: could not read text dataset {name!r} ({type(e).__name__}: "
                     f"{str(e).splitlines()[0]}); using distinct tokens.")
            inputs = "distinct"
    if vocab is None:
        vocab = max(seq_len, DEFAULT_VOCAB)
    try:
        model = nets.build_model(config, vocab, (seq_len,))
    except ValueError as e:
        print_fn(f"error: cannot build the model: {e}")
        return 2
    if inputs == "distinct":
        tokens = distinct_tokens(vocab, seq_len, num_sequences, rng)
        source = f"{num_sequences} sequences of {seq_len} distinct tokens (input kernel = identity)"
    print_fn(f"model {model.name!r} ({model.spec.name}): {g.count_nonlinear_layers(model.spec)} nonlinear "
             f"layers, init {model.init_name!r}, activation {model.activation.name} "
             f"[{model.activation.method}] {model.activation.as_dict()}")
    print_fn(f"inputs: {source}; kernels over positions averaged over {num_inits} initializations.")
    try:
        reports = compare(model, tokens, num_inits=num_inits, seed=seed)
    except g.KernelGraphError as e:
        print_fn(f"not applicable: {e}")
        return 0
    for line in format_reports(reports):
        print_fn(line)
    status, line = verdict(reports)
    print_fn(line)
    return status
