"""Theory tables: DKS/TAT parameters and network kernel maps, computed and set beside published values.

Registered (group ``theory``, so ``--table=all_theory`` runs them all):

* ``tat_depth``: TAT Leaky ReLU (eta = 0.9) negative slope and output scale against depth, for plain
  stacks, the vanilla ResNet-shaped networks (against the published values) and TAT-ResNets with
  shortcut weights.
* ``eta_sweep``: the same at depth 101 against eta.
* ``dks_params``: DKS local C'(1) targets of plain stacks, DKS parameters of every registered activation
  at depths 50 and 101, TAT parameters of every smooth activation, re-measured local maps, and the
  reference implementation's regression values.
* ``cmaps``: network C maps and their slopes for DKS, TAT, EOC and untransformed networks.

Everything is computed by ``dks_jax`` when the table runs; the only numbers in this file are the
published values the tables compare against (copied from ``REFERENCE.md``, cited where they are
defined) and the grids.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

import dks_jax
from dks_jax.kernels import graph as graph_lib
from dks_jax.kernels import layouts, local_maps
from dks_jax.transforms import solver
from dks_jax.transforms.activation import TransformedActivation
from experiments import tables
from experiments.tables import figure_link, fmt, fmt_sci, markdown_table, save_figure

# ----------------------------------------------------------------------------------------------
# Published values, copied from /work/shared/REFERENCE.md, section "Published values to reproduce
# exactly". They are kept as the strings printed there: the number of decimals says how closely a
# computed value can be expected to match (half a unit in the last printed place).

# TAT, Leaky ReLU, eta = 0.9, vanilla ResNet-shaped depth -> (negative slope, output scale).
PUBLISHED_TAT_ETA_09: dict[int, tuple[str, str]] = {
    50: ("0.4259071946", "1.3011191752"),
    101: ("0.5704395324", "1.2284042441"),
    152: ("0.6386479139", "1.1918827707"),
    200: ("0.6789062172", "1.1700454285"),
}
# TAT, Leaky ReLU, vanilla depth 101: eta -> negative slope.
PUBLISHED_ETA_SWEEP_101: dict[float, str] = {
    0.5: "0.7927", 0.7: "0.717", 0.8: "0.662", 0.9: "0.5704", 0.95: "0.4763", 0.98: "0.3405",
}
# DKS, zeta = 1.5, plain stack of L nonlinear layers: L -> local C'(1) (= 1.5 ** (1 / L)).
PUBLISHED_DKS_LOCAL_SLOPE: dict[int, str] = {
    49: "1.00830913", 100: "1.00406288", 151: "1.00268881", 199: "1.00203959",
}
# Regression values of the reference implementation for a ResNet-101 with shortcut weight 0.6:
# (method, activation, target) -> parameters.
PUBLISHED_RESNET101_W06: dict[tuple[str, str, float], dict[str, str]] = {
    ("TAT", "leaky_relu", 0.75): {"negative_slope": "0.6291800290346146",
                                  "output_scale": "1.196996549778802"},
    ("DKS", "softplus", 1.2): {"input_scale": "0.18761008168267976",
                               "input_shift": "0.40688063442262007",
                               "output_shift": "-0.9213466151411376",
                               "output_scale": "8.878672543665223"},
    ("TAT", "softplus", 0.2): {"input_scale": "0.15011489794748328",
                               "input_shift": "0.5374599901127068",
                               "output_shift": "-0.996481014465811",
                               "output_scale": "10.54880187880574"},
}

# Default targets of the papers (and of dks_jax).
ETA = 0.9
TAU = 0.3
ZETA = 1.5
NUM_CLASSES = 1000  # the logits layer is an identity on the kernel; any count gives the same maps

# ----------------------------------------------------------------------------------------------
# Shared helpers.


@dataclasses.dataclass(frozen=True)
class Solved:
    """The outcome of one solve: the activation, or the solver's message when there is no solution."""

    act: TransformedActivation | None
    error: str | None
    seconds: float

    def param(self, key: str) -> float | None:
        """A parameter by name (including shape parameters), or None when unsolved or absent."""
        if self.act is None:
            return None
        values = {"input_scale": self.act.input_scale, "input_shift": self.act.input_shift,
                  "output_shift": self.act.output_shift, "output_scale": self.act.output_scale,
                  **dict(self.act.shape_params)}
        return values.get(key)


def solve(name: str, method: str, network: graph_lib.Node, *, eta: float = ETA, tau: float = TAU,
          zeta: float = ZETA) -> Solved:
    """``dks_jax.transform`` that returns the solver's message instead of raising ``SolverError``."""
    start = time.perf_counter()
    try:
        act = dks_jax.transform(name, method, network=network, dks=dks_jax.DKSTargets(zeta),
                                tat=dks_jax.TATTargets(eta, tau))
    except solver.SolverError as err:
        return Solved(None, str(err), time.perf_counter() - start)
    return Solved(act, None, time.perf_counter() - start)


def published_diff(computed: float, published: str) -> tuple[float, bool]:
    """``|computed - published|`` and whether it is within half a unit of the last printed decimal."""
    decimals = len(published.split(".")[1]) if "." in published else 0
    diff = abs(computed - float(published))
    return diff, diff <= 0.5 * 10.0**-decimals * (1.0 + 1e-9)


def max_c0(act: TransformedActivation, network: graph_lib.Node) -> float:
    """``max_f C_f(0)`` over the network and its subnetworks, from the activation's own local C map."""
    return float(solver.network_subnet_max(network)(0.0, lambda c: float(act.c_map(c))))


def max_c_slope_1(act: TransformedActivation, network: graph_lib.Node) -> float:
    """``max_f C_f'(1) = M(1, y -> C'(1) y)``, with the activation's measured local C'(1)."""
    s = float(act.c_map(1.0, derivative=1))
    return float(solver.network_subnet_max(network)(1.0, lambda y: s * y))


def max_c_curv_1(act: TransformedActivation, network: graph_lib.Node) -> float:
    """``max_f C_f''(1) = M(0, y -> C''(1) + y)`` for C'(1) = 1, with the measured local C''(1)."""
    k = act.local_moments()["c_curv_1"]
    return float(solver.network_subnet_max(network)(0.0, lambda y: k + y))


def yes_no(flag: bool) -> str:
    """'yes', or a bold 'NO' that stands out in a table."""
    return "yes" if flag else "**NO**"


def _pyplot():
    import matplotlib.pyplot as plt  # tables imported matplotlib with the Agg backend already

    return plt


def _vanilla(depth: int) -> graph_lib.Node:
    return layouts.resnet(depth, NUM_CLASSES)


# ----------------------------------------------------------------------------------------------
# tat_depth.

TAT_PLAIN_DEPTHS = (10, 12, 13, 20, 49, 50, 100, 150, 151, 199, 200)
TAT_PLAIN_DEPTHS_QUICK = (10, 49, 100, 151, 199)
RESNET_DEPTHS = (50, 101, 152, 200)
SHORTCUT_WEIGHTS = (0.0, 0.5, 0.8, 0.9)


@tables.register_table("tat_depth", group="theory",
                       title="TAT Leaky ReLU (eta 0.9): negative slope and output scale against depth")
def tat_depth(workdir: Path, quick: bool) -> tables.TableResult:
    """TAT Leaky ReLU parameters for plain stacks, vanilla ResNets (vs published) and TAT-ResNets."""
    data: dict = {"eta": ETA, "plain": [], "vanilla": [], "shortcut": [], "regression": []}
    out = [f"TAT for Leaky ReLU chooses the negative slope `a` so that the largest C(0) over the network "
           f"and its subnetworks is eta = {ETA} (bisection on `M(0, C_a)`), and the output scale "
           "`sqrt(2 / (1 + a^2))` so that Q(q) = q. `C_net(0)` is re-measured from the solved "
           "activation's own closed-form local C map composed through the network's kernel graph; the "
           "bisection stops within 1e-8 of eta, as the reference implementation's does.\n"]

    # Plain stacks.
    rows = []
    for depth in (TAT_PLAIN_DEPTHS_QUICK if quick else TAT_PLAIN_DEPTHS):
        net = layouts.plain_stack(depth)
        s = solve("leaky_relu", "TAT", net)
        if s.act is None:
            rows.append([depth, f"**unreachable**: {s.error}", "—", "—", f"{s.seconds:.3f}"])
            data["plain"].append({"layers": depth, "error": s.error})
            continue
        c0 = float(s.act.network_c_map(net, 0.0))
        rows.append([depth, fmt(s.param("negative_slope")), fmt(s.param("output_scale")), fmt(c0),
                     f"{s.seconds:.3f}"])
        data["plain"].append({"layers": depth, "negative_slope": s.param("negative_slope"),
                              "output_scale": s.param("output_scale"), "c_net_0": c0})
    out += ["## Plain stacks of L nonlinear layers\n",
            markdown_table(["L", "negative slope a", "output scale", "C_net(0)", "solve (s)"], rows), ""]

    # Vanilla ResNet-shaped networks against the published values.
    rows = []
    for depth in RESNET_DEPTHS:
        net = _vanilla(depth)
        layers = graph_lib.count_nonlinear_layers(net)
        s = solve("leaky_relu", "TAT", net)
        plain = solve("leaky_relu", "TAT", layouts.plain_stack(layers))
        pub_a, pub_g = PUBLISHED_TAT_ETA_09[depth]
        a, g = s.param("negative_slope"), s.param("output_scale")
        da, ok_a = published_diff(a, pub_a)
        dg, ok_g = published_diff(g, pub_g)
        same = "identical" if plain.act is not None and plain.act.as_dict() == s.act.as_dict() else \
            "differs"
        rows.append([f"ResNet-{depth}", layers, fmt(a), pub_a, fmt_sci(da), fmt(g), pub_g, fmt_sci(dg),
                     yes_no(ok_a and ok_g), fmt(float(s.act.network_c_map(net, 0.0))), same])
        data["vanilla"].append({"depth": depth, "layers": layers, "negative_slope": a,
                                "output_scale": g, "published": [pub_a, pub_g], "abs_diff": [da, dg],
                                "matches": ok_a and ok_g})
    out += ["## Vanilla ResNet-shaped networks against the published values\n",
            "Published values: REFERENCE.md (the papers' and the reference implementation's values, "
            "printed with 10 decimals). 'matches' means the difference is within half a unit of the last "
            "printed decimal. A vanilla ResNet of depth D is a chain of D - 1 nonlinear layers, so its "
            "parameters equal the plain stack's (last column).\n",
            markdown_table(["network", "L", "negative slope a", "published a", "abs diff",
                            "output scale", "published scale", "abs diff", "matches",
                            "C_net(0)", "vs plain stack of L"], rows), ""]

    # The reference implementation's regression value with shortcuts.
    net = layouts.resnet(101, NUM_CLASSES, shortcut_weight=0.6)
    s = solve("leaky_relu", "TAT", net, eta=0.75)
    rows = []
    for key, pub in PUBLISHED_RESNET101_W06[("TAT", "leaky_relu", 0.75)].items():
        diff, ok = published_diff(s.param(key), pub)
        rows.append([key, fmt(s.param(key), 16), pub, fmt_sci(diff), yes_no(ok)])
        data["regression"].append({"param": key, "value": s.param(key), "published": pub,
                                   "abs_diff": diff})
    out += ["Regression value of the reference implementation (ResNet-101 with shortcut weight 0.6, "
            f"eta = 0.75; max C_f(0) over subnetworks re-measured: {fmt(max_c0(s.act, net))}):\n",
            markdown_table(["parameter", "computed", "published", "abs diff", "matches"], rows), ""]

    # TAT-ResNets with weighted shortcuts.
    rows = []
    curves: dict[float, list[tuple[int, float]]] = {}
    depths = RESNET_DEPTHS if quick else (18, 34) + RESNET_DEPTHS
    for w in SHORTCUT_WEIGHTS:
        for depth in depths:
            net = layouts.resnet(depth, NUM_CLASSES, shortcut_weight=w)
            s = solve("leaky_relu", "TAT", net)
            layers = graph_lib.count_nonlinear_layers(net)
            if s.act is None:
                rows.append([w, depth, layers, f"**unreachable**: {s.error}", "—", "—"])
                data["shortcut"].append({"shortcut_weight": w, "depth": depth, "error": s.error})
                continue
            curves.setdefault(w, []).append((depth, s.param("negative_slope")))
            c0 = max_c0(s.act, net)
            rows.append([w, depth, layers, fmt(s.param("negative_slope")), fmt(s.param("output_scale")),
                         fmt(c0)])
            data["shortcut"].append({"shortcut_weight": w, "depth": depth,
                                     "negative_slope": s.param("negative_slope"),
                                     "output_scale": s.param("output_scale"), "max_c0": c0})
    out += ["## ResNets with shortcut weight w (shortcut w, residual branch sqrt(1 - w^2))\n",
            "`w = 0` is the vanilla network. The C(0) condition is imposed on the maximum over the "
            "network and its subnetworks (here: a single residual branch), re-measured in the last "
            "column. Shortcuts make the network's kernel more linear, so a smaller negative slope (a "
            "more nonlinear activation) is needed to reach the same eta, and shallow ones may not reach "
            "it at all.\n",
            markdown_table(["shortcut weight w", "ResNet depth", "L (longest path)", "negative slope a",
                            "output scale", "max_f C_f(0)"], rows), ""]

    # Dense curve over plain depths for the figure.
    dense = range(5, 301, 15) if quick else range(1, 301)
    plain_curve = []
    for depth in dense:
        s = solve("leaky_relu", "TAT", layouts.plain_stack(depth))
        if s.act is not None:
            plain_curve.append((depth, s.param("negative_slope"), s.param("output_scale")))
    # The shallowest plain stack that reaches eta (an unreachable eta fails fast: scan one by one).
    first = next(d for d in range(1, 10**4) if solve("leaky_relu", "TAT", layouts.plain_stack(d)).act)

    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for w, points in curves.items():
        xs, ys = zip(*points)
        ax1.plot(xs, ys, "o-", label=f"w = {w:g}")
    ax1.plot(list(PUBLISHED_TAT_ETA_09), [float(v[0]) for v in PUBLISHED_TAT_ETA_09.values()], "kx",
             markersize=9, label="published (w = 0)")
    ax1.set(xlabel="ResNet depth", ylabel="negative slope a",
            title=f"TAT Leaky ReLU, eta = {ETA}: ResNets by shortcut weight")
    ax1.legend()
    xs, ys, gs = zip(*plain_curve)
    ax2.plot(xs, ys, "-", label="negative slope a")
    ax2.plot(xs, gs, "-", label="output scale sqrt(2/(1+a^2))")
    ax2.axvline(first, color="grey", linestyle=":", label=f"eta unreachable below L = {first}")
    ax2.set(xlabel="nonlinear layers L (plain stack)", ylabel="value",
            title=f"TAT Leaky ReLU, eta = {ETA}: plain stacks")
    ax2.legend()
    fig_path = save_figure(fig, workdir / "tat_depth_slope.png")
    data["plain_curve_first_reachable_layers"] = first
    out += ["## Figure\n", figure_link(fig_path, "negative slope against depth"), "",
            "Left: negative slope against ResNet depth for each shortcut weight (unreachable settings "
            "omitted; crosses: published vanilla values). Right: plain stacks of L = "
            f"{dense.start}..{dense.stop - 1} layers (step {dense.step}); eta = {ETA} is reachable from "
            f"L = {first} on."]
    return tables.TableResult("\n".join(out), [fig_path], data)


# ----------------------------------------------------------------------------------------------
# eta_sweep.

ETA_SWEEP = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)


@tables.register_table("eta_sweep", group="theory",
                       title="TAT Leaky ReLU at depth 101: negative slope and output scale against eta")
def eta_sweep(workdir: Path, quick: bool) -> tables.TableResult:
    """TAT Leaky ReLU parameters of the vanilla ResNet-101 for several eta, against published slopes."""
    net = _vanilla(101)
    rows, data = [], {"depth": 101, "rows": []}
    for eta in ETA_SWEEP:
        s = solve("leaky_relu", "TAT", net, eta=eta)
        a, g = s.param("negative_slope"), s.param("output_scale")
        diff, ok = published_diff(a, PUBLISHED_ETA_SWEEP_101[eta])
        precise = PUBLISHED_TAT_ETA_09[101][0] if eta == ETA else None
        precise_diff = published_diff(a, precise)[0] if precise else None
        rows.append([eta, fmt(a), PUBLISHED_ETA_SWEEP_101[eta], fmt_sci(diff), yes_no(ok),
                     precise or "—", fmt_sci(precise_diff), fmt(g),
                     fmt(float(s.act.network_c_map(net, 0.0)))])
        data["rows"].append({"eta": eta, "negative_slope": a, "output_scale": g,
                             "published": PUBLISHED_ETA_SWEEP_101[eta], "abs_diff": diff,
                             "matches": ok})
    out = ["Vanilla ResNet-101 layout (100 nonlinear layers). Published slopes: REFERENCE.md (printed "
           "with 3-4 decimals; the eta = 0.9 value also with 10 decimals in the depth table). "
           "'matches' means within half a unit of the last printed decimal. `C_net(0)` is re-measured "
           "from the solved activation.\n",
           markdown_table(["eta", "negative slope a", "published a", "abs diff", "matches",
                           "published a (10 decimals)", "abs diff", "output scale", "C_net(0)"], rows),
           ""]

    # Dense curves for several depths.
    etas = np.linspace(0.02, 0.995, 25 if quick else 100)
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for depth in RESNET_DEPTHS:
        vnet = _vanilla(depth)
        points = [(e, solve("leaky_relu", "TAT", vnet, eta=float(e))) for e in etas]
        points = [(e, s.param("negative_slope"), s.param("output_scale")) for e, s in points
                  if s.act is not None]
        xs, ys, gs = zip(*points)
        ax1.plot(xs, ys, "-", label=f"ResNet-{depth} (vanilla)")
        ax2.plot(xs, gs, "-", label=f"ResNet-{depth} (vanilla)")
    ax1.plot(list(PUBLISHED_ETA_SWEEP_101), [float(v) for v in PUBLISHED_ETA_SWEEP_101.values()], "kx",
             markersize=9, label="published (depth 101)")
    ax1.set(xlabel="eta (target max C(0))", ylabel="negative slope a",
            title="TAT Leaky ReLU: negative slope against eta")
    ax2.set(xlabel="eta (target max C(0))", ylabel="output scale sqrt(2/(1+a^2))",
            title="TAT Leaky ReLU: output scale against eta")
    ax1.legend()
    ax2.legend()
    fig_path = save_figure(fig, workdir / "eta_sweep_slope.png")
    out += ["## Figure\n", figure_link(fig_path, "negative slope and output scale against eta"), "",
            f"{len(etas)} values of eta in [{etas[0]:g}, {etas[-1]:g}] per depth (values a network cannot "
            "reach are omitted); crosses: the published depth-101 slopes."]
    return tables.TableResult("\n".join(out), [fig_path], data)


# ----------------------------------------------------------------------------------------------
# dks_params.

DKS_PLAIN_DEPTHS = (49, 100, 151, 199)
QUICK_ACTIVATIONS = ("relu", "leaky_relu", "softplus", "tanh", "square")
PARAM_COLUMNS = ("input_scale", "input_shift", "output_shift", "output_scale", "negative_slope")


def _first_sentence(message: str) -> str:
    """The first sentence of a solver message (the rest goes under the table)."""
    return message.split(". ")[0].rstrip(".") + "."


def _params_rows(solved: dict[str, Solved]) -> list[list[str]]:
    rows = []
    for name, s in solved.items():
        if s.act is None:
            rows.append([name] + ["—"] * len(PARAM_COLUMNS) +
                        [f"**no solution** ({s.seconds:.2f} s): {_first_sentence(s.error)}"])
        else:
            rows.append([name] + [fmt(s.param(k)) for k in PARAM_COLUMNS] +
                        [f"solved in {s.seconds:.2f} s"])
    return rows


def _dks_residual(act: TransformedActivation, moments: dict[str, float]) -> float:
    """Largest violation of the DKS local conditions (ReLU drops the Q'(1) one)."""
    targets = dict(act.local_targets)
    res = [moments["q_value"] - 1.0, moments["c_value_0"], moments["c_slope_1"] - targets["c_slope_1"]]
    spec = act.spec
    if not (spec.positive_homogeneous and not spec.shape_params):
        res.append(moments["q_slope"] - targets["q_slope"])
    return float(max(abs(r) for r in res))


def _tat_residual(act: TransformedActivation, moments: dict[str, float]) -> float:
    """Largest violation of the TAT (smooth) local conditions Q(1) = Q'(1) = C'(1) = 1, C''(1) = k."""
    k = dict(act.local_targets)["c_curv_1"]
    res = [moments["q_value"] - 1.0, moments["q_slope"] - 1.0, moments["c_slope_1"] - 1.0,
           moments["c_curv_1"] - k]
    return float(max(abs(r) for r in res))


def _moment_cells(m: dict[str, float]) -> list[str]:
    return [fmt(m["q_value"]), fmt(m["q_slope"]), fmt_sci(m["c_value_0"], 2), fmt(m["c_slope_1"]),
            fmt(m["c_curv_1"])]


def _solve_and_remeasure(method: str, depth: int, names: Sequence[str], data: dict, *,
                         target: tuple[str, str], residual: Callable, network_max: tuple[str, Callable],
                         extra_columns: Sequence[tuple[str, Callable]], note: str) -> tuple[dict, list[str]]:
    """Solves ``method`` for ``names`` on the vanilla ResNet-``depth`` layout and re-measures the maps.

    Args:
      method: 'DKS' or 'TAT'.
      depth: Vanilla ResNet depth.
      names: Activation names.
      data: The table's data dict; ``data[method.lower()][str(depth)][name]`` receives each result.
      target: (key in ``local_targets``, column header) of the local target the method solves for.
      residual: ``residual(act, moments)``: the largest violated condition.
      network_max: (column header, ``fn(act, net)``): the measured local map composed through the net.
      extra_columns: (header, ``fn(act) -> cell``) columns after the residual.
      note: Text above the re-measured table.

    Returns:
      The solved activations by name, and the markdown lines of the section.
    """
    net = _vanilla(depth)
    solved = {n: solve(n, method, net) for n in names}
    layers = graph_lib.count_nonlinear_layers(net)
    out = [f"### Vanilla ResNet-{depth} layout ({layers} nonlinear layers)\n",
           markdown_table(["activation", *PARAM_COLUMNS, "status"], _params_rows(solved)), ""]
    notes = [f"- `{n}`: {s.error}" for n, s in solved.items() if s.act is None]
    if notes:
        out += ["Solver messages:\n", *notes, ""]
    bucket = data[method.lower()].setdefault(str(depth), {})
    rows = []
    for n, s in solved.items():
        if s.act is None:
            bucket[n] = {"error": s.error}
            continue
        m = s.act.local_moments()
        rows.append([n, *_moment_cells(m), fmt(dict(s.act.local_targets)[target[0]]),
                     fmt_sci(residual(s.act, m)), *(fn(s.act) for _, fn in extra_columns),
                     fmt(network_max[1](s.act, net))])
        bucket[n] = {**s.act.as_dict(), **m}
    out += [note, markdown_table(["activation", "Q(1)", "Q'(1)", "C(0)", "C'(1)", "C''(1)", target[1],
                                  "max abs residual", *(h for h, _ in extra_columns), network_max[0]],
                                 rows), ""]
    return solved, out


@tables.register_table("dks_params", group="theory",
                       title="DKS and TAT parameters of every activation, with re-measured local maps")
def dks_params(workdir: Path, quick: bool) -> tables.TableResult:
    """DKS local slopes, DKS/TAT parameters per activation, local-map checks, regression values."""
    data: dict = {"local_slopes": [], "dks": {}, "tat": {}, "regression": []}
    out = []

    # Local C'(1) targets of plain stacks.
    rows = []
    for depth in DKS_PLAIN_DEPTHS:
        m = solver.network_subnet_max(layouts.plain_stack(depth))
        s = solver.local_c_slope_target(m, ZETA)
        exact = ZETA ** (1.0 / depth)
        pub = PUBLISHED_DKS_LOCAL_SLOPE[depth]
        diff, ok = published_diff(s, pub)
        rows.append([depth, fmt(s), fmt(exact), fmt_sci(abs(s - exact)), pub, fmt_sci(diff), yes_no(ok)])
        data["local_slopes"].append({"layers": depth, "local_c_slope_1": s, "closed_form": exact,
                                     "published": pub, "abs_diff": diff, "matches": ok})
    out += [f"## DKS local C'(1) targets (zeta = {ZETA}) of plain stacks\n",
            "The local slope `s` solving `M(1, y -> s y) = zeta` by the solver's bisection (tolerance 1e-8 "
            "on the network-level value, as in the reference implementation), beside the closed form "
            "`zeta^(1/L)` of a plain stack and the published values (REFERENCE.md, 8 decimals).\n",
            markdown_table(["L", "local C'(1) (solver)", "1.5^(1/L)", "abs diff", "published",
                            "abs diff", "matches"], rows), ""]

    names = [n for n in dks_jax.list_activations() if not quick or n in QUICK_ACTIVATIONS]
    smooth = [n for n in names if not dks_jax.get_activation(n).piecewise_linear]

    # DKS parameters at depths 50 and 101.
    out += [f"## DKS parameters (zeta = {ZETA}) of every registered activation\n",
            "`phi_hat(x) = output_scale * (phi(input_scale * x + input_shift) + output_shift)`. Conditions "
            "per layer: Q(1) = 1, Q'(1) = 1, C(0) = 0, C'(1) = s (the network-level target turned local). "
            "ReLU has one degree of freedom less (input shift fixed, the Q'(1) condition dropped); the "
            "Leaky ReLU family solves for its negative slope and input shift with input scale 1. The "
            "solver returns the canonical root with a positive input scale. When the solver reports that "
            "no solution exists, its reason is shown (full messages under the table). Solve times "
            "are those of the first solve of the family in the process (nothing is compiled).\n"]
    for depth in (50, 101):
        solved, section = _solve_and_remeasure(
            "DKS", depth, names, data, target=("c_slope_1", "target C'(1)"), residual=_dks_residual,
            network_max=("network max C'(1)", max_c_slope_1), extra_columns=(),
            note=f"Local maps re-measured from the solved activations (ResNet-{depth}); C''(1) is infinite "
                 "for kinked activations, and the last column composes the measured C'(1) through the "
                 f"network (`M(1, y -> C'(1) y)`, target {ZETA}):\n")
        out += section
    dks_101 = solved

    # TAT for smooth activations.
    tat_depths = (101,) if quick else (50, 101)
    out += [f"## TAT parameters (tau = {TAU}) of every smooth activation\n",
            "Conditions per layer: Q(1) = 1, Q'(1) = 1, C'(1) = 1 and C''(1) = k, with `M(0, y -> k + y) = "
            "tau`; C(0) is left free, as in the reference implementation. `|alpha| gamma` is "
            "|input_scale| * output_scale: the reference rejects roots with a value >= 2 when another root "
            "exists; where every root found has it >= 2 (sigmoid), the first one is returned. Piecewise-"
            "linear families are excluded (their C''(1) is infinite: TAT uses C(0) for them); other "
            "activations whose slope jumps (SELU) are refused for the same reason.\n"]
    for depth in tat_depths:
        solved, section = _solve_and_remeasure(
            "TAT", depth, smooth, data, target=("c_curv_1", "target C''(1)"), residual=_tat_residual,
            network_max=("network max C''(1)", max_c_curv_1),
            extra_columns=(("abs(alpha) gamma", lambda act: fmt(abs(act.input_scale) * act.output_scale, 4)),),
            note=f"Local maps re-measured (ResNet-{depth}); the last column composes the measured C''(1) "
                 f"through the network (`M(0, y -> C''(1) + y)`, target {TAU}):\n")
        out += section
    tat_101 = solved

    # Regression values of the reference implementation.
    net = layouts.resnet(101, NUM_CLASSES, shortcut_weight=0.6)
    rows = []
    for (method, name, target), published in PUBLISHED_RESNET101_W06.items():
        kind = "zeta" if method == "DKS" else "eta" if solver.is_leaky_family(name) else "tau"
        s = solve(name, method, net, **{kind: target})
        for key, pub in published.items():
            value = s.param(key)
            diff, _ = published_diff(value, pub)
            rows.append([f"{method} {name} ({kind} {target})", key, fmt(value, 16), pub, fmt_sci(diff),
                         fmt_sci(diff / abs(float(pub)))])
            data["regression"].append({"method": method, "activation": name, "target": target,
                                       "param": key, "value": value, "published": pub, "abs_diff": diff})
    out += ["## Regression values of the reference implementation (ResNet-101, shortcut weight 0.6)\n",
            "Published values: REFERENCE.md, printed with 16-17 significant digits. The DKS/TAT smooth "
            "parameters come from a root finder, so agreement is to the root finders' tolerance (about "
            "1e-9 relative), not to every printed digit.\n",
            markdown_table(["setting", "parameter", "computed", "published", "abs diff", "rel diff"], rows),
            ""]

    # Figure: the transformed activation functions.
    x = np.linspace(-4.0, 4.0, 401)
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, solved, title in ((ax1, dks_101, f"DKS (zeta {ZETA}), vanilla ResNet-101"),
                              (ax2, tat_101, f"TAT (tau {TAU}), vanilla ResNet-{tat_depths[-1]}")):
        for n, s in solved.items():
            if s.act is not None:
                ax.plot(x, np.asarray(s.act(x)), label=n, linewidth=1)
        ax.plot(x, x, "k:", linewidth=1, label="identity")
        ax.set(xlabel="x", ylabel="phi_hat(x)", title=title, ylim=(-5, 5))
        ax.legend(fontsize=6, ncol=2)
    fig_path = save_figure(fig, workdir / "dks_params_activations.png")
    out += ["## Figure\n", figure_link(fig_path, "transformed activation functions"), "",
            "The transformed activations on [-4, 4]: deep networks need nearly linear layers (local C'(1) "
            "close to 1, small C''(1)), and every family is bent into almost the same shape."]
    return tables.TableResult("\n".join(out), [fig_path], data)


# ----------------------------------------------------------------------------------------------
# cmaps.


LOCAL_NODES = 201  # spline nodes for the chain rule's local maps (each node costs three 2D quadratures)


@dataclasses.dataclass(frozen=True)
class Dual:
    """A value and its derivative with respect to the input correlation (forward-mode chain rule).

    ``graph.propagate`` only adds branches and scales them by constants, so these two operations are all
    a dual number needs to travel through any kernel graph.
    """

    value: np.ndarray
    slope: np.ndarray

    def __add__(self, other: "Dual | float") -> "Dual":
        if isinstance(other, Dual):
            return Dual(self.value + other.value, self.slope + other.slope)
        return Dual(self.value + other, self.slope)

    __radd__ = __add__

    def __mul__(self, k: float) -> "Dual":
        return Dual(k * self.value, k * self.slope)

    __rmul__ = __mul__


def closed_form_negative_slope(act: TransformedActivation) -> float | None:
    """The negative slope when the local C map is the Leaky ReLU closed form (no shifts), else None."""
    if not act.spec.piecewise_linear or act.input_shift != 0.0 or act.output_shift != 0.0:
        return None
    return float(dict(act.shape_params).get("negative_slope", 0.0))


@functools.lru_cache(maxsize=64)
def local_map_and_slope(act: TransformedActivation, points: int = LOCAL_NODES
                        ) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    """``(C, C')`` of the activation's local C map as vectorized functions on [-1, 1].

    Closed forms for the unshifted Leaky ReLU family. Otherwise cubic Hermite splines on ``points``
    nodes through exact values and derivatives: ``C`` from (C, C'), ``C'`` from (C', C''), all three by
    quadrature (``act.c_map``), so both are accurate to about ``h^4``.
    """
    from scipy.interpolate import CubicHermiteSpline

    a = closed_form_negative_slope(act)
    if a is not None:
        return (lambda c: local_maps.leaky_relu_c_map(np.clip(c, -1.0, 1.0), a),
                lambda c: local_maps.leaky_relu_c_map(np.clip(c, -1.0, 1.0), a, 1))
    grid = np.linspace(-1.0, 1.0, points)
    c0, c1, c2 = (np.asarray(act.c_map(grid, derivative=k)) for k in (0, 1, 2))
    value, slope = CubicHermiteSpline(grid, c0, c1), CubicHermiteSpline(grid, c1, c2)
    return (lambda c: value(np.clip(c, -1.0, 1.0)), lambda c: slope(np.clip(c, -1.0, 1.0)))


def network_map_and_slope(act: TransformedActivation, network: graph_lib.Node,
                          c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The network's C map and its derivative at ``c``, by the chain rule through ``graph.propagate``."""
    value, slope = local_map_and_slope(act)
    r = lambda d: Dual(value(d.value), slope(d.value) * d.slope)
    out = graph_lib.propagate(network, Dual(np.asarray(c, np.float64), np.ones_like(c, np.float64)), r)
    return np.asarray(out.value), np.asarray(out.slope)


CMAP_METHODS = (  # (key, label, activation, method)
    ("dks_softplus", f"DKS softplus (zeta {ZETA})", "softplus", "DKS"),
    ("tat_leaky_relu", f"TAT Leaky ReLU (eta {ETA})", "leaky_relu", "TAT"),
    ("tat_softplus", f"TAT softplus (tau {TAU})", "softplus", "TAT"),
    ("eoc_relu", "EOC ReLU (He init)", "relu", "EOC"),
    ("untransformed_relu", "untransformed ReLU", "relu", "untransformed"),
    ("untransformed_softplus", "untransformed softplus", "softplus", "untransformed"),
)
CMAP_DEPTHS = (10, 50, 100, 200)
CMAP_DEPTHS_QUICK = (10, 100)
COMBINED_DEPTH = 100
FD_STEP = 1e-5


@tables.register_table("cmaps", group="theory",
                       title="Network C maps and their slopes: DKS, TAT, EOC and untransformed")
def cmaps(workdir: Path, quick: bool) -> tables.TableResult:
    """Network C maps (and slopes) of plain stacks per method and depth, figures and a summary table."""
    depths = CMAP_DEPTHS_QUICK if quick else CMAP_DEPTHS
    c = np.linspace(-1.0, 1.0, 201 if quick else 401)
    interior = c[np.abs(c) <= 0.98]
    probe = np.array([0.0, 0.5])
    curves: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    rows, data, figures = [], {"rows": []}, []
    for key, label, name, method in CMAP_METHODS:
        for depth in depths:
            net = layouts.plain_stack(depth)
            s = solve(name, method, net)
            if s.act is None:
                rows.append([label, depth, f"**unreachable**: {_first_sentence(s.error)}",
                             *["—"] * 4])
                data["rows"].append({"method": key, "layers": depth, "error": s.error})
                continue
            # The network's C map, as the library composes it, on the grid, the probes and the
            # finite-difference points (one call: each call tabulates the local map afresh).
            points = np.concatenate([c, probe, interior + FD_STEP, interior - FD_STEP])
            lib = np.asarray(s.act.network_c_map(net, points))
            on_grid, at_probe = lib[:c.size], lib[c.size:c.size + 2]
            plus, minus = np.split(lib[c.size + 2:], 2)
            fd_slope = (plus - minus) / (2.0 * FD_STEP)
            value, slope = network_map_and_slope(s.act, net, c)
            _, chain_interior = network_map_and_slope(s.act, net, interior)
            fd_err = float(np.max(np.abs(chain_interior - fd_slope)))
            value_err = float(np.max(np.abs(value - on_grid)))
            top = max_c_slope_1(s.act, net)
            curves[(key, depth)] = (on_grid, slope)
            rows.append([label, depth, fmt(float(at_probe[0]), 8), fmt(float(at_probe[1]), 8),
                         f"{top:.8g}", fmt_sci(value_err), fmt_sci(fd_err)])
            data["rows"].append({"method": key, "layers": depth, "c_net_0": float(at_probe[0]),
                                 "c_net_0_5": float(at_probe[1]), "max_c_slope_1": top,
                                 "chain_vs_library_value": value_err, "chain_vs_fd_slope": fd_err})

        plt = _pyplot()
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        for i, depth in enumerate(depths):
            if (key, depth) in curves:
                on_grid, slope = curves[(key, depth)]
                ax1.plot(c, on_grid, color=f"C{i}", label=f"L = {depth}")
                ax2.plot(c, slope, color=f"C{i}", label=f"L = {depth}")
            else:
                ax1.plot([], [], " ", label=f"L = {depth}: unreachable")
        ax1.plot(c, c, "k:", linewidth=1, label="identity")
        ax1.set(xlabel="input correlation c", ylabel="C_net(c)", title=f"{label}: network C map")
        ax2.set(xlabel="input correlation c", ylabel="C_net'(c)", title=f"{label}: slope")
        ax1.legend(fontsize=8)
        ax2.legend(fontsize=8)
        figures.append(save_figure(fig, workdir / f"cmaps_{key}.png"))

    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label, _, _ in CMAP_METHODS:
        if (key, COMBINED_DEPTH) in curves:
            on_grid, slope = curves[(key, COMBINED_DEPTH)]
            ax1.plot(c, on_grid, label=label)
            ax2.plot(c, slope, label=label)
    ax1.plot(c, c, "k:", linewidth=1, label="identity")
    ax1.set(xlabel="input correlation c", ylabel="C_net(c)",
            title=f"Network C maps, plain stacks of {COMBINED_DEPTH} layers")
    ax2.set(xlabel="input correlation c", ylabel="C_net'(c)", title=f"Slopes, {COMBINED_DEPTH} layers")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    combined = save_figure(fig, workdir / f"cmaps_depth{COMBINED_DEPTH}.png")

    out = [
        "Plain stacks of L nonlinear layers, each method solved for its own depth (DKS and TAT "
        "transformations depend on L; EOC and untransformed activations do not). `C_net(c)` is "
        "`act.network_c_map(network, c)`: the local C map composed through the kernel graph.\n",
        "Slopes: computed by the **chain rule** through `graph.propagate` with a map carrying "
        "(value, slope) pairs, `(v, s) -> (C(v), C'(v) s)`. C and C' are closed forms for the unshifted "
        "Leaky ReLU family; otherwise cubic Hermite splines on "
        f"{LOCAL_NODES} nodes through C(c), C'(c) and C''(c), all computed by quadrature. Two checks "
        "per row: the chain rule's values against `network_c_map` on the grid (whose own spline has "
        "other nodes), and its slopes against central **finite differences** of `network_c_map` "
        f"(step {FD_STEP:g}) on c in [-0.98, 0.98]. `max C'_net(1)` is `M(1, y -> C'(1) y)` (for a "
        "plain stack, C'(1)^L).\n",
        "What to look for: DKS keeps C_net(0) = 0 and C'_net(1) = zeta at every depth; TAT Leaky ReLU "
        "keeps C_net(0) = eta and C'_net(1) = 1; TAT softplus keeps C'_net(1) = 1 with a network C''(1) "
        "of tau. EOC and untransformed networks degenerate with depth: C_net(c) -> 1 for every c (all "
        "inputs look alike) and the slope collapses towards 0 away from c = 1. EOC and untransformed "
        "ReLU have identical C maps (an output scale does not change a positively homogeneous "
        "activation's C map). Untransformed softplus does not preserve q = 1; its curves compose the "
        "unit-q local C map (what `network_c_map` computes), i.e. a network whose layer inputs are "
        "rescaled to unit q.\n",
        markdown_table(["method", "L", "C_net(0)", "C_net(0.5)", "max C'_net(1)",
                        "chain vs library value", "chain vs FD slope"], rows), "",
        "## Figures\n",
        figure_link(combined, f"all methods at {COMBINED_DEPTH} layers"), "",
    ]
    for (key, label, _, _), path in zip(CMAP_METHODS, figures):
        out += [f"{label}:\n", figure_link(path, f"{label} network C map and slope"), ""]
    return tables.TableResult("\n".join(out), [combined, *figures], data)
