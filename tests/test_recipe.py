"""docs/activations.md's recipe, run as written: a module in another folder registers its activations."""

import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dks_jax
from dks_jax import nets
from dks_jax.kernels import layouts
from dks_jax.transforms import solver

DOC = Path(__file__).resolve().parent.parent / "docs" / "activations.md"


def _doc_block(first_line: str) -> str:
    """The ```python block of the doc that starts with ``first_line``."""
    for block in re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"no python block starting with {first_line!r} in {DOC}")


@pytest.fixture()
def my_activations(tmp_path):
    """Writes the doc's module to <tmp>/my_project/my_activations.py and imports it from there."""
    path = tmp_path / "my_project" / "my_activations.py"
    path.parent.mkdir()
    path.write_text(_doc_block("# my_project/my_activations.py"))
    spec = importlib.util.spec_from_file_location("my_project_my_activations", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    spec.loader.exec_module(importlib.util.module_from_spec(spec))  # importing twice is fine
    yield path
    for name in ("tanh_plus_linear", "leaky_tanh"):
        dks_jax.unregister_activation(name)


def test_registered_function_solves_and_builds_a_model(my_activations):
    net = layouts.mlp(30, 256, 10)
    for method in ("DKS", "TAT"):
        act = dks_jax.transform("tanh_plus_linear", method, network=net)
        m = act.local_moments()
        assert m["q_value"] == pytest.approx(1.0, abs=1e-9)
        assert m["q_slope"] == pytest.approx(1.0, abs=1e-9)
        if method == "DKS":
            assert m["c_slope_1"] == pytest.approx(1.5 ** (1 / 30), abs=1e-9)
        else:
            assert m["c_curv_1"] == pytest.approx(0.3 / 30, abs=1e-9)
    # Independently of the library's quadrature: the returned function is tanh(a x + b) + 0.1 (a x + b),
    # shifted and scaled, and has unit second moment under N(0, 1) (Monte Carlo).
    z = np.random.default_rng(1).standard_normal(1_000_000)
    p = act.as_dict()
    u = p["input_scale"] * z + p["input_shift"]
    y = p["output_scale"] * (np.tanh(u) + 0.1 * u + p["output_shift"])
    assert np.mean(y * y) == pytest.approx(1.0, abs=6 * np.std(y * y) / 1000)
    # A model built from a dict config uses it.
    config = {"model": "mlp", "depth": 4, "width": 16, "activation": "tanh_plus_linear",
              "method": "TAT", "c_curve_target": 0.3}
    model = nets.build_model(config, num_classes=10, input_shape=(8,))
    assert model.activation.name == "tanh_plus_linear" and model.activation.method == "TAT"
    params, state = model.init(jax.random.PRNGKey(0))
    logits, _ = model.apply(params, state, None, jnp.ones((2, 8)))
    assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))


def test_kinked_function_is_found_and_refused_by_tat_with_the_documented_message(my_activations):
    with pytest.raises(solver.SolverError) as err:
        dks_jax.transform("leaky_tanh", "TAT", network=layouts.mlp(30, 256, 10))
    documented = ("TAT for smooth activations cannot shape 'leaky_tanh': 'leaky_tanh': phi' jumps "
                  "(a kink) at x = 0 (found numerically), so phi'' holds a Dirac delta and C''(1) = "
                  "E[phi''(z)^2] / Q(1) is infinite")
    assert str(err.value).startswith(documented)
    assert " ".join(documented.split()) in " ".join(DOC.read_text().split())
    act = dks_jax.transform("leaky_tanh", "DKS", network=layouts.mlp(30, 256, 10))
    assert act.local_moments()["c_curv_1"] == math.inf
    assert act.local_moments()["c_slope_1"] == pytest.approx(1.5 ** (1 / 30), abs=1e-9)


@pytest.mark.slow
def test_command_line_registers_from_the_file(my_activations):
    out = subprocess.run([sys.executable, "-m", "dks_jax.solve", f"--register_from={my_activations}",
                          "--activation=tanh_plus_linear", "--method=TAT", "--arch=mlp", "--depth=30"],
                         capture_output=True, text=True, check=True)
    curv = float(re.search(r"network max C''\(1\) over subnetworks = (\S+)", out.stdout).group(1))
    assert curv == pytest.approx(0.3, abs=1e-8)


@pytest.mark.slow
def test_the_docs_config_file_trains_from_another_folder(tmp_path):
    """The recipe end to end: the doc's module and config in a project folder, trained by the CLI."""
    project = tmp_path / "my_project"
    (project / "configs").mkdir(parents=True)
    (project / "__init__.py").write_text("")
    (project / "my_activations.py").write_text(_doc_block("# my_project/my_activations.py"))
    config = project / "configs" / "tanh_linear.py"
    config.write_text(_doc_block("# my_project/configs/tanh_linear.py"))
    repo = DOC.parent.parent
    env = {**__import__("os").environ, "PYTHONPATH": f"{tmp_path}:{repo}"}
    proc = subprocess.run([sys.executable, "-m", "experiments.train", f"--config={config}",
                           f"--workdir={tmp_path / 'run'}", "--config.max_steps=3", "--quiet"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = __import__("json").loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["activation"]["name"] == "tanh_plus_linear"
    assert summary["activation"]["method"] == "TAT"
