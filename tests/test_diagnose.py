"""dks_jax.diagnose: the default config passes, BN models are not applicable, disagreements exit 1."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import load_config, make_config
from dks_jax import diagnostics as diagnose
from dks_jax import nets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "dks_jax.diagnose", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["", ":tiny"])
def test_default_config_passes(variant):
    result = _cli(f"--config=configs/default.py{variant}", )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert "real images of 'digits'" in result.stdout
    assert lines[-1].startswith("worst disagreement:") and lines[-1].endswith("-> PASS")
    assert "tolerance" in lines[-1]
    # One table row per top-level layer of the spec, the output (logits) last.
    model = nets.build_model(_load_default(variant), 10, (8, 8, 1))
    rows = [l for l in lines if l[:4].strip().isdigit()]
    assert len(rows) == len(model.spec.layers) and "logits" in rows[-1]


def _load_default(variant):
    return load_config("default.py" + variant)


_config = make_config


def _run(config, **kwargs):
    lines = []
    status = diagnose.run_diagnostics(config, print_fn=lines.append, **kwargs)
    return status, "\n".join(lines)


def test_batch_norm_models_are_not_applicable():
    status, out = _run(_config(model="resnet_bn", depth=18, method="untransformed", activation="relu",
                               stem="small", width_multiplier=1 / 16, dataset="synthetic"))
    assert status == 0 and "not applicable" in out


def test_unbuildable_config_exits_2():
    status, out = _run(_config(model="mlp", depth=4, width=16))  # eta 0.9 is unreachable at depth 4
    assert status == 2 and "unreachable" in out


def test_per_location_pairs_on_rgb_images_with_pln():
    # Convnet on 3-channel images: per-pixel mixing; PLN 'const' changes c to (3c + 1) / 4 (accounted for).
    status, out = _run(_config(model="convnet", depth=16, width=64, dataset="synthetic", pln_mode="const"),
                       pairs_per_value=4, num_inits=2)
    assert status == 0, out
    assert "per-location kernels" in out and "PLN (const)" in out
    assert "0.250/0.250" in out  # c = 0 after PLN with 3 channels: (3 * 0 + 1) / 4
    assert "GlobalAvgPool" in out and "pooling: not checked" in out


def test_single_channel_convnet_falls_back_to_gaussian_inputs():
    status, out = _run(_config(model="convnet", depth=16, width=64, dataset="digits"), pairs_per_value=4,
                       num_inits=2)
    assert status == 0, out
    assert "cannot be set with 1 input channel" in out and "Gaussian inputs" in out


def test_missing_dataset_falls_back_to_gaussian_inputs():
    status, out = _run(_config(model="mlp", depth=16, width=64, dataset="mnist",
                               data_dir="/nonexistent/dks_jax_data"), pairs_per_value=4, num_inits=2)
    assert status == 0, out
    assert "could not load dataset 'mnist'" in out and "Gaussian inputs" in out


def test_a_network_that_disagrees_with_its_kernel_map_fails(monkeypatch):
    # The network runs an activation 15% larger than the one the predictions use: q grows 1.32x per layer.
    real_build = nets.build_model

    def build_mismatched(config, num_classes, input_shape):
        model = real_build(config, num_classes, input_shape)
        wrong = jax.tree_util.Partial(lambda x: 1.15 * model.activation(x))
        import haiku as hk  # pylint: disable=g-import-not-at-top
        forward = nets.make_forward(model.spec, wrong, init=model.init_name)
        return nets.Model(model.name, model.spec, model.activation, model.init_name, num_classes,
                          model.input_shape, hk.transform_with_state(forward))

    monkeypatch.setattr(nets, "build_model", build_mismatched)
    status, out = _run(_config(model="mlp", depth=16, width=64), pairs_per_value=4, num_inits=4)
    assert status == 1, out
    assert out.splitlines()[-1].endswith("-> FAIL") and "beyond tolerance" in out


def test_mix_pairs_is_exact():
    rng = np.random.default_rng(0)
    first = rng.standard_normal((8, 5, 3))
    second = rng.standard_normal((8, 5, 3))
    first[0, 0] = 0.0  # degenerate: replaced
    second[1, 1] = 2.0 * first[1, 1]  # parallel: replaced
    c = np.repeat([0.0, 0.3, 0.6, 0.9], 2)
    a, b = diagnose.mix_pairs(first, second, c, rng)
    np.testing.assert_allclose(np.mean(a * a, -1), 1.0)
    np.testing.assert_allclose(np.mean(b * b, -1), 1.0)
    cos = np.sum(a * b, -1) / np.sqrt(np.sum(a * a, -1) * np.sum(b * b, -1))
    np.testing.assert_allclose(cos, np.broadcast_to(c[:, None], cos.shape), atol=1e-12)
