"""DKS / TAT solved on transformer layer specifications (the scalar graph of ``graph.propagate``).

In the per-pair graph attention is the identity, so a vanilla transformer of L blocks (one MLP nonlinearity
each) has the ``M`` of a plain stack of L nonlinear layers: the published TAT / DKS values for 49 nonlinear
layers must come out of a 49-block transformer. Normalized shortcut sums are checked against a recursion
written out here from the closed-form Leaky ReLU C map.
"""

import math

import numpy as np
import pytest

from conftest import dict_config
from reference_values import PUBLISHED_DKS_SLOPES, PUBLISHED_TAT
from dks_jax import transforms
from dks_jax.kernels import graph as g
from dks_jax.kernels import layouts, local_maps
from dks_jax.nets import models


def _spec(depth, **kwargs):
    return layouts.transformer(depth, 16, 11, num_heads=2, **kwargs)


@pytest.mark.parametrize("attention", ["softmax", "espa", "uspa", "value_skipinit"])
@pytest.mark.parametrize("block", ["vanilla", "norm_only"])
def test_tat_leaky_relu_on_a_49_block_transformer_reproduces_the_published_49_layer_values(attention, block):
    spec = _spec(49, attention=attention, block=block)
    assert g.count_nonlinear_layers(spec) == 49
    act = transforms.transform("leaky_relu", "TAT", network=spec)
    # Published for 49 nonlinear layers (vanilla ResNet-50 shape), TAT eta = 0.9.
    assert act.as_dict()["negative_slope"] == pytest.approx(PUBLISHED_TAT[50][0], abs=5e-10)
    assert act.as_dict()["output_scale"] == pytest.approx(PUBLISHED_TAT[50][1], abs=5e-10)


def test_dks_local_slope_on_a_transformer():
    act = transforms.transform("softplus", "DKS", network=_spec(49, attention="espa"))
    # zeta = 1.5 on 49 nonlinear layers in sequence: local C'(1) = 1.5^(1/49) = 1.00830913 (published).
    assert dict(act.local_targets)["c_slope_1"] == pytest.approx(PUBLISHED_DKS_SLOPES[49], abs=5e-9)
    assert act.local_moments()["c_slope_1"] == pytest.approx(1.5 ** (1 / 49), abs=1e-9)


def test_tat_smooth_local_curvature_on_a_transformer():
    # M(0, y -> k + y) = L k for L nonlinear layers in sequence.
    act = transforms.transform("softplus", "TAT", network=_spec(10, attention="espa"),
                               tat=transforms.TATTargets(c_curve_target=0.3))
    assert act.local_moments()["c_curv_1"] == pytest.approx(0.03, rel=1e-6)
    assert act.local_moments()["c_slope_1"] == pytest.approx(1.0, abs=1e-9)


def test_tat_leaky_relu_with_normalized_skips_matches_the_written_out_recursion():
    depth, w, eta = 12, 0.6, 0.3
    act = transforms.transform("leaky_relu", "TAT", network=_spec(depth, block="skips_only",
                                                                   shortcut_weight=w),
                               tat=transforms.TATTargets(c_val_0_target=eta))
    a = act.as_dict()["negative_slope"]
    # Attention sublayer: w^2 c + (1 - w^2) c (identity); MLP sublayer: w^2 c + (1 - w^2) C_a(c). The
    # maximum over subnetworks also sees a lone MLP branch, C_a(0).
    c = 0.0
    for _ in range(depth):
        c = w * w * c + (1 - w * w) * local_maps.leaky_relu_c_map(c, a)
    assert max(c, local_maps.leaky_relu_c_map(0.0, a)) == pytest.approx(eta, abs=2e-8)
    vanilla = transforms.transform("leaky_relu", "TAT", network=_spec(depth),
                                   tat=transforms.TATTargets(c_val_0_target=eta))
    assert a < vanilla.as_dict()["negative_slope"]  # skips make the net more linear: a sharper kink


def test_pre_ln_baseline_has_no_kernel_map_and_says_so():
    spec = _spec(4, attention="softmax", block="pre_ln")
    with pytest.raises(g.KernelGraphError, match="unnormalized sum"):
        transforms.transform("leaky_relu", "TAT", network=spec, tat=transforms.TATTargets(0.3))
    config = dict_config(model="transformer", depth=4, width=16, attention="softmax",
                         block="pre_ln", activation="leaky_relu", method="TAT")
    with pytest.raises(ValueError, match=r"config.method='TAT' is invalid for transformer.block='pre_ln'"):
        models.model_spec(config, 11)


@pytest.mark.parametrize("fields,message", [
    (dict(attention="linear"), r"config.transformer.attention='linear' is invalid; valid: softmax, espa"),
    (dict(block="post_ln"), r"config.transformer.block='post_ln' is invalid"),
    (dict(num_heads=3), r"config.width=16 is not divisible by config.transformer.num_heads=3"),
    (dict(block="skips_only"), r"config.shortcut_weight=0.0 is invalid for transformer.block"),
    (dict(shortcut_weight=0.5), r"config.shortcut_weight=0.5 is only read by model 'tat_resnet'"),
    (dict(espa_gamma=0.0), r"config.transformer.espa_gamma=0.0 is invalid"),
    (dict(positional="rope"), r"config.transformer.positional='rope' is invalid"),
])
def test_transformer_config_errors_name_the_field(fields, message):
    config = dict_config(model="transformer", depth=4, width=16, activation="leaky_relu", method="TAT",
                         **fields)
    with pytest.raises(ValueError, match=message):
        models.model_spec(config, 11)


def test_espa_schedule_in_the_spec():
    spec = _spec(3, attention="espa", espa_gamma=0.01)
    attn = [n for n in g.iter_nodes(spec) if isinstance(n, g.Attention)]
    assert [a.param_in for a in attn][0] == math.inf and attn[-1].param_out == 0.01
    np.testing.assert_array_equal([a.param_out for a in attn[:-1]], [a.param_in for a in attn[1:]])
