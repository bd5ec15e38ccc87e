"""The default experiment: a TAT vanilla MLP (Leaky ReLU) on scikit-learn's digits, in minutes on a CPU.

Usage:
  python -m experiments.train --config=configs/default.py --workdir=/tmp/dks_default
  python -m experiments.train --config=configs/default.py:tiny --workdir=/tmp/t --config.depth=4

Every config in this folder is flat (big_vision style): one locked ``ConfigDict`` of strings and numbers.
Variants: '' (the full default run) and 'tiny' (a few real steps on the CPU, used by the tests).
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Returns the config for the variant named by ``arg`` ('' or 'tiny')."""
    variant = arg or "full"
    if variant not in ("full", "tiny"):
        raise ValueError(f"configs/default.py: unknown variant {arg!r}; valid: '' (full), 'tiny'.")
    c = ml_collections.ConfigDict()
    c.seed = 0

    # Data (dks_jax.data registry).
    c.dataset = "digits"
    c.data_dir = ""  # '' = $DKS_JAX_DATA_DIR, else ../shared/data beside the repository.
    c.validation_fraction = 0.0
    c.augment = ""  # '' = the dataset's standard augmentation; 'none' disables it.
    c.normalize = "meanstd"  # 'meanstd' (per channel), 'unit' ([0, 1] only).
    c.pln_mode = ""  # per-location normalization: '' off, or 'none' / 'const' / 'avg_q'.

    # Model (dks_jax.nets registry): 'mlp', 'vanilla_resnet', 'tat_resnet', 'resnet_bn'.
    c.model = "mlp"
    c.depth = 30
    c.width = 256  # MLP hidden units.
    c.width_multiplier = 1.0  # ResNet channel multiplier.
    c.stem = "small"  # ResNet stem: 'small' (3x3, 28-32 px inputs) or 'imagenet'.
    c.shortcut_weight = 0.0  # tat_resnet only.
    c.dropout_rate = 0.0
    c.init = "orthogonal"  # 'orthogonal' (SUO, Delta for convs), 'he_normal', 'lecun_normal'.

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
    c.momentum = 0.9
    c.nesterov = 1  # 0/1 (configs hold numbers, not booleans).
    c.weight_decay = 1e-4  # L2 on weights, biases excluded.
    c.label_smoothing = 0.0
    c.batch_size = 128
    c.num_epochs = 30
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

    if variant == "tiny":
        c.depth = 4
        c.width = 32
        c.batch_size = 32
        c.num_epochs = 1
        c.max_steps = 3  # Stop after this many steps (tests).
    else:
        c.max_steps = 0  # 0 = num_epochs worth of steps.
    c.lock()
    return c
