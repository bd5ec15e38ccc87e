"""The config schema: every field's range is checked at load, overrides are typed, sections pass through."""

import json

import ml_collections
import pytest

from conftest import CONFIGS, load_config, make_config
from dks_jax import configlib
from dks_jax.optim import optimizers, schedules


def _schema_value_rejected(field: configlib.Field):
    """A value of the field's own type that its check must reject (None when every value is valid)."""
    kind = field.kind or type(field.default)
    if field.check is None:
        return None
    if kind is str:
        return "no-such-choice"
    if kind is tuple:
        return (-1.0,)
    for candidate in (-1e9, -1, 0, 1.0, 1e9):
        value = kind(candidate)
        if field.check(value):
            return value
    raise AssertionError(f"no rejected value found for {field.path}")


@pytest.mark.parametrize("field", [f for f in configlib.SCHEMA if f.check is not None],
                         ids=lambda f: f.path)
def test_every_checked_field_rejects_out_of_range_values_naming_the_field(field):
    bad = _schema_value_rejected(field)
    config = make_config(**{field.path: bad})
    with pytest.raises(configlib.ConfigError, match=f"config.{field.path}="):
        configlib.validate(config)


def test_defaults_and_every_config_file_are_valid():
    configlib.validate(configlib.base_config())
    for name in configlib.config_files(CONFIGS):
        for arg in ("", "tiny"):
            config = load_config(f"{name}:{arg}" if arg else name)
            configlib.validate(config)
            assert config.is_locked


@pytest.mark.parametrize("path,value,message", [
    ("learning_rate", 0.0, "config.learning_rate=0.0 must be a number > 0"),
    ("learning_rate", -0.1, "config.learning_rate=-0.1 must be a number > 0"),
    ("tat.c_val_0_target", 1.0, r"config.tat.c_val_0_target=1.0 must lie in \(0, 1\)"),
    ("dataset", "mnsit", "did you mean 'mnist'"),
    ("optimizer.name", "lbfgs", "'adam', 'kfac', 'sgd'"),
    ("schedule.piecewise_constant.boundaries", (0.8, 0.2), "non-decreasing"),
])
def test_messages_say_what_is_valid(path, value, message):
    with pytest.raises(configlib.ConfigError, match=message):
        configlib.validate(make_config(**{path: value}))


def test_locked_configs_refuse_new_fields_and_suggest_the_right_one():
    config = configlib.base_config()
    with pytest.raises(AttributeError, match="learning_rate"):
        config.learnin_rate = 0.1


def test_overrides_are_parsed_in_the_fields_type():
    config = configlib.base_config()
    configlib.apply_overrides(config, {
        "learning_rate": "0.03", "optimizer.sgd.nesterov": "false", "depth": "12",
        "schedule.piecewise_constant.boundaries": "0.3,0.6", "optimizer.kfac.norm_constraint": "none",
        "activation": "tanh"})
    assert config.learning_rate == 0.03 and config.optimizer.sgd.nesterov is False
    assert config.depth == 12 and config.schedule.piecewise_constant.boundaries == (0.3, 0.6)
    assert config.optimizer.kfac.norm_constraint is None and config.activation == "tanh"
    with pytest.raises(configlib.ConfigError, match="did you mean learning_rate"):
        configlib.apply_overrides(config, {"learnin_rate": "0.1"})
    with pytest.raises(configlib.ConfigError, match="must be a boolean"):
        configlib.apply_overrides(config, {"optimizer.sgd.nesterov": "maybe"})
    with pytest.raises(configlib.ConfigError, match="must be an integer"):
        configlib.apply_overrides(config, {"depth": "1.5"})
    with pytest.raises(configlib.ConfigError, match="config.depth=0 must be a number >= 1"):
        configlib.apply_overrides(config, {"depth": "0"})


def test_sections_are_the_components_keyword_arguments():
    """What `optimizer.<name>` / `schedule.<name>` hold is accepted as is by the component."""
    config = configlib.base_config()
    for name in optimizers.list_optimizers():
        options = configlib.section(config.optimizer, name)
        optimizers.optimizer_config_class(name)(**options)  # no unknown or missing keys
    for name in schedules.list_schedules():
        schedules.get_schedule(name, peak_value=0.1, total_steps=100, warmup_steps=5,
                               **configlib.section(config.schedule, name))


def test_config_file_errors():
    with pytest.raises(configlib.ConfigError, match="does not exist; configs in .*default.py"):
        configlib.load_config_file(str(CONFIGS / "nope.py"))
    with pytest.raises(configlib.ConfigError, match="unknown config option 'archh' .*did you mean 'arch'"):
        configlib.load_config_file(str(CONFIGS / "mnist.py") + ":archh=mlp")
    with pytest.raises(configlib.ConfigError, match="depth='ten' must be an integer"):
        configlib.load_config_file(str(CONFIGS / "mnist.py") + ":depth=ten")


def test_changed_fields_compares_stored_json_with_a_config():
    old = make_config(depth=30)
    stored = json.loads(json.dumps(configlib.to_json_dict(old)))
    new = make_config(depth=20, num_epochs=20.0)
    changes = configlib.changed_fields(stored, new)
    assert changes == {"depth": (30, 20), "num_epochs": (10.0, 20.0)}
    assert not configlib.is_resumable_change("depth") and configlib.is_resumable_change("num_epochs")
    assert configlib.changed_fields(stored, old) == {}  # tuples vs JSON lists compare equal


def test_describe_lists_every_field_with_its_rule():
    text = configlib.describe(configlib.base_config())
    for field in configlib.SCHEMA:
        assert f"| {field.path} |" in text
    assert "must be a number > 0" in text  # learning_rate's rule


def test_registered_fields_extend_the_schema():
    field = configlib.Field("_test_only.knob", 2, "a field a plugin registers", configlib.at_least(0))
    configlib.register_fields(field)
    try:
        config = configlib.base_config()
        assert config._test_only.knob == 2
        configlib.register_fields(field)  # idempotent
        with pytest.raises(ValueError, match="already registered"):
            configlib.register_fields(configlib.Field("_test_only.knob", 3, "other"))
    finally:
        configlib._BY_PATH.pop("_test_only.knob")
    assert isinstance(configlib.base_config(), ml_collections.ConfigDict)


def test_fields_added_to_the_schema_later_are_no_change_at_their_default():
    """A run stored before the schema gained a field was made with the field's default behaviour."""
    stored = json.loads(json.dumps(configlib.to_json_dict(make_config())))
    del stored["eval_batch_size"]
    assert configlib.changed_fields(stored, make_config()) == {}
    assert configlib.changed_fields(stored, make_config(eval_batch_size=64)) == {"eval_batch_size": (None, 64)}
    del stored["depth"]  # a field that is not at its default still counts
    assert "depth" in configlib.changed_fields(stored, make_config(depth=7))


@pytest.mark.parametrize("arch", ["vanilla_resnet", "tat_resnet", "resnet_bn"])
def test_every_cifar10_variant_builds_at_every_depth(arch):
    """The transformation of each architecture of configs/cifar10.py solves at each depth it offers (the
    TAT-ResNet's eta = 0.9 was unreachable at depth 18 with shortcut weight 0.8)."""
    from dks_jax import nets  # pylint: disable=g-import-not-at-top

    for depth in (18, 34, 50, 101, 152, 200):
        for method, activation in (("TAT", "leaky_relu"), ("DKS", "softplus"), ("EOC", "relu")):
            if arch != "vanilla_resnet" and method != "TAT":
                continue
            config = load_config(f"cifar10.py:arch={arch},depth={depth},method={method},activation={activation}")
            model = nets.build_model(config, 10, (32, 32, 3))
            assert model.spec.name.endswith(str(depth))


@pytest.mark.parametrize("depth", [50, 101, 152, 200])
def test_every_imagenet_variant_builds(depth):
    from dks_jax import nets  # pylint: disable=g-import-not-at-top

    for arch in ("vanilla_resnet", "tat_resnet", "resnet_bn"):
        for method in ("TAT", "DKS", "EOC"):
            config = load_config(f"imagenet.py:arch={arch},depth={depth},method={method}")
            assert nets.build_model(config, 1000, (224, 224, 3)).spec.name.endswith(str(depth))
