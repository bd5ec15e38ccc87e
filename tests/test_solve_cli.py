"""python -m experiments.solve (and its shim dks_jax.solve): output against the library and independent values."""

import json
import math
import re

import pytest

import dks_jax
from experiments import cli
from experiments import solve
from dks_jax.kernels import layouts, local_maps


def _json(capsys, *argv):
    assert solve.main(list(argv) + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_dks_network_maps(capsys):
    out = _json(capsys, "--method=DKS", "--activation=softplus", "--arch=plain", "--depth=20")
    assert out["params"] == dks_jax.transform("softplus", "DKS", network=layouts.plain_stack(20)).as_dict()
    assert out["network_max_c_slope_1"] == pytest.approx(1.5, abs=1e-7)
    net_c = {float(k): v for k, v in out["network_c_map"].items()}
    assert net_c[0.0] == pytest.approx(0.0, abs=1e-12) and net_c[1.0] == 1.0  # C(0) = 0 at every layer
    assert out["preserves_unit_q"] and out["nonlinear_layers"] == 20


def test_tat_leaky_relu_network_c0_is_eta_by_the_closed_form(capsys):
    out = _json(capsys, "--method=TAT", "--activation=leaky_relu", "--depth=50", "--layers")
    a = out["params"]["negative_slope"]
    c = 0.0
    for _ in range(49):  # the vanilla ResNet-50 shape is a chain of 49 nonlinear layers
        c = local_maps.leaky_relu_c_map(c, a)
    assert float(out["network_c_map"]["0.0"]) == pytest.approx(c, abs=1e-12)
    assert c == pytest.approx(0.9, abs=1e-8)
    assert out["network_max_c_curv_1"] == math.inf  # C''(1) of a kinked activation
    last = out["layers"][-1]["c"]
    assert last == pytest.approx(list(out["network_c_map"].values()), abs=1e-12)


def test_text_output_and_per_layer_table(capsys):
    assert solve.main(["--method=TAT", "--activation=gelu", "--arch=plain", "--depth=5", "--layers"]) == 0
    text = capsys.readouterr().out
    assert "network max C'(1) over subnetworks = 1" in text
    curv = float(re.search(r"network max C''\(1\) over subnetworks = (\S+)", text).group(1))
    assert curv == pytest.approx(0.3, abs=1e-8)
    assert text.count(": Act") == 5
    assert solve.main(["--method=TAT", "--activation=gelu", "--arch=plain", "--depth=5"]) == 0
    assert ": Act" not in capsys.readouterr().out  # the table only when asked


def test_untransformed_activation_notes_that_q_is_not_preserved(capsys):
    assert solve.main(["--method=untransformed", "--activation=tanh", "--arch=plain", "--depth=3"]) == 0
    assert "note: Q(1) = 0.394" in capsys.readouterr().out


def test_eoc_network_slope_is_one(capsys):
    out = _json(capsys, "--method=EOC", "--activation=cos", "--arch=plain", "--depth=10")
    assert out["network_max_c_slope_1"] == pytest.approx(1.0, abs=1e-10)
    assert out["local_targets"]["q_star"] == pytest.approx(1.19968, abs=1e-5)


@pytest.mark.parametrize("argv,match", [
    (["--method=TAT", "--activation=selu", "--arch=plain", "--depth=10"], r"C''\(1\)"),
    (["--method=DKS", "--activation=jnp.sum", "--arch=plain", "--depth=10"], "not an elementwise"),
    (["--method=TAT", "--activation=leaky_relu", "--arch=plain", "--depth=3"], "unreachable"),
    (["--method=EOC", "--activation=tanh"], r"q\* -> 0"),
    (["--register_from=/nonexistent/file.py"], "No such file"),
])
def test_errors_are_one_line_and_exit_2(capsys, monkeypatch, argv, match):
    monkeypatch.setattr("sys.argv", ["dks_jax.solve", *argv])
    with pytest.raises(SystemExit) as info:
        cli.main_wrapper(solve.main, "dks_jax.solve")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("dks_jax.solve: error: ") and len(err.strip().splitlines()) == 1
    assert re.search(match, err)
