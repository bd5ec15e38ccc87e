"""Closed-form values of the learning-rate schedules."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dks_jax.optim import schedules


def test_constant():
    sched = schedules.get_schedule("constant", peak_value=0.3, total_steps=100)
    for step in (0, 7, 10**6):
        assert float(sched(step)) == pytest.approx(0.3)
    assert sched(jnp.int32(3)).dtype == jnp.float32


@pytest.mark.parametrize("name,options", [("constant", {}),
                                          ("piecewise_constant", dict(boundaries=(0.5,), factors=(0.1,)))])
def test_every_schedule_warms_up_linearly(name, options):
    sched = schedules.get_schedule(name, peak_value=0.4, total_steps=100, warmup_steps=8, **options)
    assert [float(sched(t)) for t in (0, 2, 4, 8, 30)] == pytest.approx([0.0, 0.1, 0.2, 0.4, 0.4])
    if name == "piecewise_constant":
        assert float(sched(60)) == pytest.approx(0.04)


def test_schedule_options_are_checked():
    with pytest.raises(ValueError, match="no options \\['factors'\\]"):
        schedules.get_schedule("cosine", peak_value=1.0, total_steps=10, factors=(0.1,))


@pytest.mark.parametrize("step,expected", [
    (0, 0.0),
    (5, 0.5),                                            # half-way through warm-up
    (10, 1.0),                                           # peak
    (55, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))),
    (32.5, None),                                        # filled in below
    (100, 0.1),                                          # end value
    (150, 0.1),                                          # stays at end value
])
def test_cosine_closed_form(step, expected):
    sched = schedules.get_schedule("cosine", peak_value=1.0, total_steps=100, warmup_steps=10,
                                   end_value=0.1)
    if expected is None:  # a quarter of the decay
        expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25))
    assert float(sched(step)) == pytest.approx(expected, abs=1e-6)


def test_cosine_without_warmup_and_default_end():
    sched = schedules.cosine(peak_value=2.0, total_steps=10)
    assert float(sched(0)) == pytest.approx(2.0)
    assert float(sched(5)) == pytest.approx(1.0, abs=1e-6)
    assert float(sched(10)) == pytest.approx(0.0, abs=1e-7)


def test_cosine_is_jittable_and_vmappable():
    sched = schedules.cosine(peak_value=1.0, total_steps=100, warmup_steps=10)
    steps = jnp.arange(0, 120, 7, dtype=jnp.int32)
    eager = np.array([float(sched(int(s))) for s in steps])
    np.testing.assert_allclose(jax.jit(jax.vmap(sched))(steps), eager, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kwargs", [
    dict(boundaries=[10, 20]),
    dict(boundaries=[0.1, 0.2], total_steps=100),
])
def test_piecewise_constant(kwargs):
    sched = schedules.piecewise_constant(init_value=1.0, factors=[0.1, 0.5], **kwargs)
    expected = {0: 1.0, 9: 1.0, 10: 0.1, 19: 0.1, 20: 0.05, 1000: 0.05}
    for step, value in expected.items():
        assert float(sched(step)) == pytest.approx(value, rel=1e-6)
    assert float(jax.jit(sched)(jnp.int32(15))) == pytest.approx(0.1, rel=1e-6)


@pytest.mark.parametrize("kwargs", [
    dict(init_value=1.0, boundaries=[10, 0.5], factors=[0.1, 0.1], total_steps=100),  # mixed
    dict(init_value=1.0, boundaries=[0.5], factors=[0.1]),                           # no total
    dict(init_value=1.0, boundaries=[20, 10], factors=[0.1, 0.1]),                   # decreasing
    dict(init_value=1.0, boundaries=[10], factors=[0.1, 0.1]),                       # lengths
])
def test_piecewise_constant_rejects_bad_boundaries(kwargs):
    with pytest.raises(ValueError):
        schedules.piecewise_constant(**kwargs)


def test_unknown_schedule_lists_valid_names():
    with pytest.raises(ValueError, match="constant.*cosine.*piecewise_constant"):
        schedules.get_schedule("linear", peak_value=1.0, total_steps=10)


def test_cosine_rejects_bad_steps():
    with pytest.raises(ValueError):
        schedules.cosine(peak_value=1.0, total_steps=10, warmup_steps=11)
    with pytest.raises(ValueError):
        schedules.cosine(peak_value=1.0, total_steps=0)


def test_as_schedule():
    assert float(schedules.as_schedule(0.5)(3)) == pytest.approx(0.5)
    sched = schedules.constant(0.25)
    assert schedules.as_schedule(sched) is sched


def test_registered_piecewise_reads_fractions_of_training():
    sched = schedules.get_schedule("piecewise_constant", peak_value=1.0, total_steps=40,
                                   boundaries=(0.25, 0.5), factors=(0.1, 0.5))
    assert [float(sched(t)) for t in (9, 10, 19, 20)] == pytest.approx([1.0, 0.1, 0.1, 0.05])


@pytest.mark.parametrize("name,options,direct", [
    ("constant", {}, lambda: schedules.linear_warmup(schedules.constant(0.2), 3)),
    ("cosine", dict(end_value=0.02), lambda: schedules.cosine(0.2, 20, warmup_steps=3, end_value=0.02)),
    ("piecewise_constant", dict(boundaries=(0.5,), factors=(0.1,)),
     lambda: schedules.linear_warmup(schedules.piecewise_constant(0.2, (0.5,), (0.1,), 20), 3)),
])
def test_registered_schedules_keep_the_peak_apart(name, options, direct):
    """The registered schedules are `Scaled` by their peak (what the optimizers feed to the compiled step)
    and equal the schedules written with the peak inside, at every step."""
    sched = schedules.get_schedule(name, peak_value=0.2, total_steps=20, warmup_steps=3, **options)
    assert isinstance(sched, schedules.Scaled) and sched.scale == pytest.approx(0.2)
    shape, scale = schedules.split_scale(sched)
    steps = np.arange(25)
    expected = np.array([float(direct()(t)) for t in steps])
    np.testing.assert_allclose([float(sched(t)) for t in steps], expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose([scale * float(shape(t)) for t in steps], expected, rtol=1e-6, atol=1e-9)


def test_split_scale_of_numbers_and_plain_schedules():
    shape, scale = schedules.split_scale(0.5)
    assert scale == 0.5 and float(shape(7)) == 1.0
    plain = schedules.cosine(0.1, 10)
    assert schedules.split_scale(plain) == (plain, 1.0)
    # A zero peak has no scale to factor out: the schedule stays whole (and zero).
    zero = schedules.get_schedule("cosine", peak_value=0.0, total_steps=10, end_value=0.0)
    assert not isinstance(zero, schedules.Scaled) and float(zero(3)) == 0.0
