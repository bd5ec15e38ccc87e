"""The experiment config schema and helpers for the files in ``configs/``.

Every config is one flat, locked ``ml_collections.ConfigDict`` of strings and numbers (big_vision style).
``base_config()`` holds every field with its default and a comment: it is the schema, and a config file
only overrides what differs. Config files take one argument string, parsed by ``parse_arg``:
``configs/mnist.py:arch=convnet,depth=50,tiny`` gives ``{"arch": "convnet", "depth": 50, "tiny": True}``.
"""

from __future__ import annotations

from typing import Any

import ml_collections


def parse_arg(arg: str | None, **defaults: Any) -> dict[str, Any]:
    """Parses ``"a=1,b=x,flag"`` into a dict, casting values to the type of their default.

    Args:
      arg: The text after ``:`` in ``--config=file.py:arg`` (may be empty or None).
      **defaults: Every accepted key with its default value (its type is the value's type).

    Returns:
      The options, defaults filled in.

    Raises:
      ValueError: Unknown keys (the message lists the valid ones) or values of the wrong type.
    """
    options = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"Unknown config option {key!r}; valid options: {sorted(defaults)}.")
        kind = type(defaults[key])
        if not sep:
            if kind is not bool:
                raise ValueError(f"Config option {key!r} needs a value ({key}=...).")
            options[key] = True
        elif kind is bool:
            options[key] = value.strip().lower() in ("1", "true", "yes")
        else:
            try:
                options[key] = kind(value.strip())
            except ValueError:
                raise ValueError(f"Config option {key}={value!r} must be a {kind.__name__}.") from None
    return options


def base_config() -> ml_collections.ConfigDict:
    """Every config field with its default (unlocked; config files override and then ``lock()``)."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    # Data (dks_jax.data registry).
    c.dataset = "digits"
    c.data_dir = ""  # '' = $DKS_JAX_DATA_DIR, else ../shared/data beside the repository.
    c.validation_fraction = 0.0  # Held out of train; 'eval_split' may then be 'validation'.
    c.eval_split = "test"
    c.augment = ""  # '' = the dataset's standard augmentation; 'none' disables it.
    c.normalize = "meanstd"  # 'meanstd' (per channel) or 'unit' ([0, 1] only).
    c.image_size = 224  # ImageNet crops.
    c.pln_mode = ""  # Per-location normalization of the input: '' off, or 'none' / 'const' / 'avg_q'.

    # Model (dks_jax.nets registry): 'mlp', 'convnet', 'vanilla_resnet', 'tat_resnet', 'resnet_bn'.
    c.model = "mlp"
    c.depth = 30
    c.width = 256  # MLP units / convnet channels.
    c.width_multiplier = 1.0  # ResNet channel multiplier.
    c.stem = "small"  # ResNet stem: 'small' (3x3, 28-32 px inputs) or 'imagenet'.
    c.shortcut_weight = 0.0  # tat_resnet only.
    c.dropout_rate = 0.0
    c.init = ""  # '' = per method (SUO/Delta for DKS/TAT/EOC); 'orthogonal', 'he_normal', 'lecun_normal'.

    # Activation transformation (dks_jax.transforms).
    c.activation = "leaky_relu"
    c.method = "TAT"  # 'DKS', 'TAT', 'EOC', 'untransformed'.
    c.c_slope_1_target = 1.5  # DKS zeta.
    c.local_q_slope_target = 1.0  # DKS.
    c.c_val_0_target = 0.9  # TAT eta (Leaky ReLU).
    c.c_curve_target = 0.3  # TAT tau (smooth activations).

    # Optimization (dks_jax.optim registries).
    c.optimizer = "sgd"  # 'sgd', 'adam', 'kfac'.
    c.learning_rate = 0.1
    c.schedule = "cosine"  # 'constant', 'cosine', 'piecewise_constant'.
    c.warmup_epochs = 1.0
    c.lr_boundaries = "0.5,0.75"  # piecewise_constant: fractions of training...
    c.lr_factors = "0.1,0.1"  # ...and the factor applied at each.
    c.momentum = 0.9
    c.nesterov = 1  # 0/1 (configs hold numbers, not booleans).
    c.weight_decay = 0.0  # L2 on weights (biases excluded).
    c.label_smoothing = 0.0
    c.batch_size = 128
    c.num_epochs = 10.0
    c.max_steps = 0  # Stop early after this many steps (0 = train num_epochs); the schedule is unchanged.
    c.kfac_damping = 1e-3
    c.kfac_curvature_ema = 0.95
    c.kfac_inverse_update_period = 5
    c.kfac_norm_constraint = 1e-3
    c.kfac_burnin_steps = 5

    # Bookkeeping.
    c.eval_every_steps = 0  # 0 = once per epoch.
    c.checkpoint_every_steps = 0  # 0 = once per epoch.
    c.keep_checkpoints = 3
    c.log_every_steps = 20
    return c


def tiny(c: ml_collections.ConfigDict, *, depth: int | None = None) -> ml_collections.ConfigDict:
    """Shrinks a config to a few real CPU steps (used by the tests for every config)."""
    if depth is not None:
        c.depth = depth
    c.width = min(c.width, 32)
    c.width_multiplier = min(c.width_multiplier, 1 / 16)
    c.batch_size = 16
    c.max_steps = 3
    c.log_every_steps = 1
    c.kfac_burnin_steps = min(c.kfac_burnin_steps, 1)
    # Every step then traces to the same K-FAC program: one compilation instead of two.
    c.kfac_inverse_update_period = 1
    c.image_size = min(c.image_size, 64)
    return c
