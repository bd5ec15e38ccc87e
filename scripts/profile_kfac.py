"""Where a K-FAC step's time goes: compile time and run time of each piece, per layer type.

Builds a network with ``dks_jax.nets.build_model`` and K-FAC with ``dks_jax.optim.make_optimizer`` (no
training loop, no config module), on random 32x32x3 inputs with 10 classes, and times separately, each
under its own ``jax.jit``:

  * the whole K-FAC step (step 0, which refreshes the inverses, and step 1, which does not: two
    programs) and SGD's step;
  * the loss's forward/backward pass (what SGD pays);
  * the curvature pass: the estimator's own forward pass and the backward pass of the sampled loss
    "half-factor" vectors (``ggn_curvature_prop``), which yield every layer's inputs and output tangents;
  * the whole curvature-estimate update (that pass, then the factor statistics and moving averages);
  * the factor statistics (per block), the inverses (per block and all together) and the
    preconditioning of a gradient (per block and all together).

Per-block figures are summed over the blocks of each layer type (dense; conv by kernel and stride; the
stem is the first conv). All pieces are compiled first, then run round robin (one run of each per round,
``--reps`` rounds), and run time is the median of a piece's runs; compile time is tracing + lowering and
XLA's compilation of that piece. Pieces compiled on their own do not add up exactly
to the step (XLA fuses across them inside the step), but they show where the time goes.

Usage:
  python scripts/profile_kfac.py [--case=convnet|mlp] [--batch=N] [--reps=5] [--per_layer]
      [--kfac field=value ...]   (KFACConfig fields, e.g. --kfac curvature_batch_fraction=0.25)
"""

from __future__ import annotations

import os

# jaxlib's CPU LAPACK (the factor inverses) runs on scipy's OpenBLAS, whose worker threads spin and
# stall for up to hundreds of ms when the cores are shared with other processes (30x slower inverses
# measured here under load). One thread keeps timings stable; set OPENBLAS_NUM_THREADS to override.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import ast
import collections
import platform
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import kfac_jax
import numpy as np

from dks_jax import nets
from dks_jax import optim

# The two cases of scripts/bench_train.py (same networks, same default batch sizes).
CASES = {
    "mlp": (dict(model="mlp", depth=50, width=512), 128),
    "convnet": (dict(model="vanilla_resnet", depth=18, width_multiplier=0.25, stem="small"), 32),
}
MODEL_FIELDS = dict(activation="leaky_relu", method="TAT", init="", pln_mode="")
INPUT_SHAPE, NUM_CLASSES = (32, 32, 3), 10
L2_REG, LEARNING_RATE = 1e-5, 1e-3


class Piece:
    """One piece of the step, compiled on its own, with the arguments to run it on."""

    def __init__(self, name: str, fn: Callable[..., Any], *args: Any):
        self.name, self.args, self.runs = name, args, []
        start = time.perf_counter()
        lowered = jax.jit(fn).lower(*args)
        self.lower_s = time.perf_counter() - start
        start = time.perf_counter()
        self.compiled = lowered.compile()
        self.compile_s = time.perf_counter() - start
        self.output = jax.block_until_ready(self.compiled(*args))  # warm-up; reused as an input

    def run_once(self) -> None:
        start = time.perf_counter()
        jax.block_until_ready(self.compiled(*self.args))
        self.runs.append(time.perf_counter() - start)

    @property
    def run_s(self) -> float:
        return statistics.median(self.runs)


def run_round_robin(pieces: list[Piece], reps: int) -> None:
    """Runs every piece once per round, `reps` rounds: a change in the machine's load during the
    profile then affects all pieces alike instead of whichever was being timed."""
    for _ in range(reps):
        for piece in pieces:
            piece.run_once()


def block_labels(estimator: Any) -> dict[int, str]:
    """Layer type of every curvature block: 'dense', 'conv KxK/S' or 'stem conv KxK/S' (the module
    named stem_conv by the builder), with the block's class."""
    modules = {}
    for module, leaves in estimator.params_block_index.items():
        for index in leaves.values():
            modules[index] = module
    labels = {}
    for index, block in enumerate(estimator.blocks):
        kind = type(block).__name__
        params = block._layer_tag_eq.params  # pylint: disable=protected-access
        if "window_strides" in params:
            kh, kw = block.parameters_shapes[0][:2]
            prefix = "stem conv" if "stem" in modules.get(index, "") else "conv"
            labels[index] = f"{prefix} {kh}x{kw}/{params['window_strides'][0]} [{kind}]"
        else:
            labels[index] = f"dense [{kind}]"
    return labels


def factor_dims(state: Any) -> str:
    """The factor sizes of one block state, e.g. '145+64' (Kronecker) or 'diag 9216'."""
    factors = getattr(state, "factors", None)
    if factors is not None:
        return "+".join(str(f.value.shape[0]) for f in factors)
    diagonals = getattr(state, "diagonal_factors", ())
    return "diag " + "+".join(str(int(np.prod(d.value.shape))) for d in diagonals)


def make_problem(case: str, batch_size: int, kfac_fields: dict[str, Any]):
    """Model, loss, K-FAC and SGD optimizers, parameters, state and one random batch."""
    fields, _ = CASES[case]
    model = nets.build_model({**fields, **MODEL_FIELDS}, NUM_CLASSES, INPUT_SHAPE)

    def loss_fn(params, state, rng, batch):
        logits, new_state = model.transformed.apply(params, state, rng, batch["image"], is_training=True)
        loss = optim.classification_loss(logits, batch["label"], label_smoothing=0.0,
                                         num_classes=NUM_CLASSES, register_for_kfac=True)
        return loss, (new_state, {"accuracy": optim.accuracy(logits, batch["label"])})

    rs = np.random.RandomState(0)
    batch = {"image": jnp.asarray(rs.randn(batch_size, *INPUT_SHAPE), jnp.float32),
             "label": jnp.asarray(rs.randint(0, NUM_CLASSES, batch_size), jnp.int32)}
    params, func_state = model.init(jax.random.PRNGKey(0), batch["image"])
    kfac = optim.make_optimizer("kfac", loss_fn, LEARNING_RATE, l2_reg=L2_REG, **kfac_fields)
    sgd = optim.make_optimizer("sgd", loss_fn, LEARNING_RATE, l2_reg=L2_REG)
    return model, loss_fn, kfac, sgd, params, func_state, batch


def curvature_vectors(estimator: Any, losses: Any, rng: jax.Array) -> tuple[Any, ...]:
    """The vectors the estimator back-propagates, as kfac_jax 0.0.8 forms them for its mode."""
    mode = estimator.default_estimation_mode
    keys = jax.random.split(rng, len(losses))
    if mode in ("ggn_curvature_prop", "fisher_curvature_prop"):
        ggn = mode.startswith("ggn")
        return tuple(
            (loss.multiply_ggn_factor if ggn else loss.multiply_fisher_factor)(
                jax.random.rademacher(key, (loss.ggn_factor_inner_shape if ggn
                                            else loss.fisher_factor_inner_shape)))
            for loss, key in zip(losses, keys))
    if mode == "fisher_gradients":
        return tuple(loss.grad_of_evaluate_on_sample(key, coefficient_mode="sqrt")
                     for loss, key in zip(losses, keys))
    if mode == "fisher_empirical":
        return tuple(loss.grad_of_evaluate(None, coefficient_mode="regular") for loss in losses)
    raise ValueError(f"profile: estimation mode {mode!r} is not supported here")


def main(argv: list[str] | None = None) -> None:
    """Profiles one case; `argv` defaults to the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", default="convnet", choices=list(CASES))
    parser.add_argument("--batch", type=int, default=0, help="batch size (default: the case's)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--per_layer", action="store_true", help="also print every block")
    parser.add_argument("--kfac", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="KFACConfig fields (Python literals)")
    args = parser.parse_args(argv)
    kfac_fields = dict(num_burnin_steps=0)
    for item in args.kfac:
        key, _, value = item.partition("=")
        try:
            kfac_fields[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kfac_fields[key] = value
    batch_size = args.batch or CASES[args.case][1]
    reps = args.reps

    model, loss_fn, kfac, sgd, params, func_state, batch = make_problem(args.case, batch_size,
                                                                         kfac_fields)
    rng = jax.random.PRNGKey(1)
    print(f"devices: {jax.devices()}; host: {platform.node()}")
    print(f"case {args.case}: {model.spec.name}, batch {batch_size}, "
          f"{model.num_params(params):,} parameters; KFACConfig: {kfac.config}\n")

    kfac_state = kfac.init(params, func_state, rng, batch)
    raw = kfac.kfac_optimizer
    estimator = raw._estimator  # pylint: disable=protected-access
    cfg = kfac.config
    identity_weight = L2_REG + cfg.damping
    use_exact = bool(getattr(cfg, "use_exact_inverses", False))
    power = raw._precon_power  # pylint: disable=protected-access  # -1.0: the cache is keyed by str(power)
    powers = dict(exact_powers=power if use_exact else None, approx_powers=None if use_exact else power)
    curv_batch = kfac.curvature_batch(batch) if hasattr(kfac, "curvature_batch") else batch
    curv_size = jax.tree_util.tree_leaves(curv_batch)[0].shape[0]
    func_args = (params, func_state, rng, curv_batch)
    pieces: list[Piece] = []

    def add(name: str, fn: Callable[..., Any], *fn_args: Any) -> Piece:
        piece = Piece(name, fn, *fn_args)
        pieces.append(piece)
        print(f"  compiled {name}: trace+lower {piece.lower_s:.1f} s, XLA {piece.compile_s:.1f} s",
              flush=True)
        return piece

    # 1. Whole steps. Steps whose counter is a multiple of the inverse period refresh the inverses
    # (when it is > 1, with a program of their own): step 0 does, step 1 does not.
    add("SGD step", lambda p, s, f, r, b: sgd.step(p, s, f, r, b, 1), params,
        sgd.init(params, func_state, rng, batch), func_state, rng, batch)
    add("K-FAC step 0 (inverse refresh)", lambda p, s, f, r, b: kfac.step(p, s, f, r, b, 0),
        params, kfac_state, func_state, rng, batch)
    if cfg.inverse_update_period > 1:
        state_1 = kfac_state.copy()
        state_1.step_counter = jnp.asarray(1, state_1.step_counter.dtype)
        add("K-FAC step 1 (no refresh)", lambda p, s, f, r, b: kfac.step(p, s, f, r, b, 1),
            params, state_1, func_state, rng, batch)

    # 2. The loss's forward/backward pass.
    objective = optim.with_l2(loss_fn, L2_REG)
    add("forward/backward (loss, grads)", jax.value_and_grad(objective, has_aux=True),
        params, func_state, rng, batch)

    # 3. The curvature pass alone: layer inputs and output tangents of every block.
    def curvature_pass(p, f, r, b):
        losses, losses_vjp = estimator._compute_losses_vjp((p, f, r, b))  # pylint: disable=protected-access
        return losses_vjp(curvature_vectors(estimator, losses, r))

    blocks_data = add(f"curvature pass (batch {curv_size})", curvature_pass, *func_args).output

    # 4. The whole curvature-estimate update (pass + statistics + moving averages).
    def curvature_update(est_state, p, f, r, b):
        return estimator.update_curvature_matrix_estimate(
            est_state, ema_old=cfg.curvature_ema, ema_new=1.0, identity_weight=identity_weight,
            batch_size=curv_size, rng=r, func_args=(p, f, r, b))

    est_state = add("curvature update (pass + factor statistics)", curvature_update,
                    kfac_state.estimator_state, *func_args).output

    # 5. All inverses, all preconditioning.
    def all_inverses(est_state):
        return estimator.update_cache(est_state, identity_weight=identity_weight, eigenvalues=False,
                                      pmap_axis_name=None, **powers)

    est_state = add("inverses (all blocks)", all_inverses, est_state).output
    grads = jax.grad(lambda p: objective(p, func_state, rng, batch)[0])(params)

    def precondition(est_state, g):
        return estimator.multiply_matpower(est_state, g, identity_weight=identity_weight, power=power,
                                           exact_power=use_exact, use_cached=True, pmap_axis_name=None)

    add("preconditioning (all blocks)", precondition, est_state, grads)
    whole = list(pieces)

    # 6. Per block: factor statistics, inverse, preconditioning.
    labels = block_labels(estimator)
    blocks_grads = estimator.params_vector_to_blocks_vectors(grads)
    per_block = []
    for i, (block, b_state, data, vec) in enumerate(zip(estimator.blocks, est_state.blocks_states,
                                                        blocks_data, blocks_grads)):
        stats = Piece("stats", lambda s, d, blk=block: blk.update_curvature_matrix_estimate(
            s, d, ema_old=cfg.curvature_ema, ema_new=1.0, identity_weight=identity_weight,
            batch_size=curv_size), b_state, data)
        inverse = Piece("inverse", lambda s, blk=block: blk.update_cache(
            s, identity_weight=identity_weight, eigenvalues=False, **powers), b_state)
        precon = Piece("precon", lambda s, v, blk=block: blk.multiply_matpower(
            s, v, identity_weight=identity_weight, power=power, exact_power=use_exact,
            use_cached=True), b_state, vec)
        pieces.extend((stats, inverse, precon))
        per_block.append((i, labels[i], factor_dims(b_state),
                          dict(stats=stats, inverse=inverse, precon=precon)))
    print(f"  compiled the per-block pieces of {len(per_block)} blocks; timing round robin", flush=True)
    run_round_robin(pieces, reps)

    print(f"\n### K-FAC profile: {args.case}, batch {batch_size} (curvature on {curv_size}), "
          f"{len(estimator.blocks)} blocks, median of {reps} round-robin runs\n")
    print("| piece | trace+lower (s) | XLA compile (s) | run (ms) |")
    print("|---|---|---|---|")
    for piece in whole:
        print(f"| {piece.name} | {piece.lower_s:.1f} | {piece.compile_s:.1f} | {piece.run_s * 1e3:.1f} |")
    groups: dict[str, list[Any]] = collections.OrderedDict()
    for entry in per_block:
        groups.setdefault(entry[1], []).append(entry)
    print("\n| layer type | blocks | factor sizes (count) | statistics: compile s / run ms | "
          "inverse: compile s / run ms | preconditioning: compile s / run ms |")
    print("|---|---|---|---|---|---|")
    for label, entries in groups.items():
        dims = collections.Counter(entry[2] for entry in entries)
        cells = []
        for key in ("stats", "inverse", "precon"):
            compile_s = sum(e[3][key].lower_s + e[3][key].compile_s for e in entries)
            run_ms = sum(e[3][key].run_s for e in entries) * 1e3
            cells.append(f"{compile_s:.1f} / {run_ms:.1f}")
        print(f"| {label} | {len(entries)} | " + ", ".join(f"{d} ({n})" for d, n in dims.items())
              + " | " + " | ".join(cells) + " |")
    if args.per_layer:
        print("\n| block | layer type | factor sizes | statistics ms | inverse ms | preconditioning ms |")
        print("|---|---|---|---|---|---|")
        for i, label, dims, timed_pieces in per_block:
            print(f"| {i} | {label} | {dims} | " + " | ".join(
                f"{timed_pieces[k].run_s * 1e3:.2f}" for k in ("stats", "inverse", "precon")) + " |")


if __name__ == "__main__":
    main()
