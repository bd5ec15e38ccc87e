"""ImageNet: depths 50/101/152/200 x {TAT, DKS, EOC, ResNet} x {SGD, K-FAC}, with the public settings.

Usage (on accelerators, with ImageNet prepared for TFDS in --config.data_dir):
  python -m experiments.train --config=configs/imagenet.py:depth=101,method=TAT,optimizer=kfac
  python -m experiments.train --config=configs/imagenet.py:arch=resnet_bn,depth=50,optimizer=sgd

Options (``:a=b,...``): ``depth`` (50, 101, 152, 200), ``method`` (TAT, DKS, EOC; ignored for resnet_bn),
``arch`` (vanilla_resnet, tat_resnet, resnet_bn), ``activation`` (default: leaky_relu for TAT, softplus for
DKS, relu for EOC/ResNet), ``optimizer`` (sgd, kfac), ``tiny``.
Public settings (../shared/REFERENCE.md): batch 1024, 90 epochs, label smoothing 0.1, cosine schedule with 5
warm-up epochs; K-FAC peak LR 3e-4, fixed damping 1e-3, momentum 0.9, curvature EMA 0.99, inverse update
period 50, norm constraint 1e-3, 5 burn-in steps, no L2 on biases; SGD Nesterov 0.9 with peak LR 0.1.
Random resized crops to 224 and horizontal flips. Expected time: ~1 day for 90 epochs of a ResNet-101-shaped
net on 8 modern accelerators (K-FAC costs ~1.3-1.5x SGD per step).
"""

from dks_jax import configlib

_ACTIVATION = {"TAT": "leaky_relu", "DKS": "softplus", "EOC": "relu"}


def get_config(arg: str = ""):
    """Returns the locked config; see the module docstring for the options in ``arg``."""
    o = configlib.parse_arg(arg, depth=101, method="TAT", arch="vanilla_resnet", activation="",
                            optimizer="kfac", tiny=False)
    if o["depth"] not in (50, 101, 152, 200):
        raise configlib.ConfigError(f"depth must be 50, 101, 152 or 200, got {o['depth']}.")
    if o["method"] not in _ACTIVATION:
        raise configlib.ConfigError(f"method must be one of {sorted(_ACTIVATION)}, got {o['method']!r}.")
    if o["optimizer"] not in ("sgd", "kfac"):
        raise configlib.ConfigError(f"optimizer must be 'sgd' or 'kfac', got {o['optimizer']!r}.")
    c = configlib.base_config()
    c.dataset = "tfds_imagenet2012"
    c.image_size = 224
    c.model = o["arch"]
    c.depth = o["depth"]
    c.stem = "imagenet"
    c.width_multiplier = 1.0
    c.shortcut_weight = 0.8 if o["arch"] == "tat_resnet" else 0.0
    if o["arch"] == "resnet_bn":
        c.method, c.activation = "untransformed", "relu"
    else:
        c.method = o["method"]
        c.activation = o["activation"] or _ACTIVATION[o["method"]]
    c.optimizer.name = o["optimizer"]
    c.batch_size = 1024
    c.num_epochs = 90.0
    c.label_smoothing = 0.1
    c.schedule.name = "cosine"
    c.schedule.warmup_epochs = 5.0
    c.optimizer.kfac.update(dict(damping=1e-3, momentum=0.9, curvature_ema=0.99,
                                 inverse_update_period=50, norm_constraint=1e-3, num_burnin_steps=5))
    c.optimizer.sgd.update(dict(momentum=0.9, nesterov=True))
    if o["optimizer"] == "kfac":
        c.learning_rate = 3e-4
        c.weight_decay = 1e-5
    else:
        c.learning_rate = 0.1
        c.weight_decay = 1e-4
    c.log_every_steps = 100
    c.checkpoint_every_steps = 2000
    c.eval_every_steps = 5000
    if o["tiny"]:
        # A few real steps on TFDS-shaped synthetic data at 64 px (the test mocks TFDS for the real path).
        configlib.tiny(c)
        c.dataset = "synthetic"
        c.depth = 18  # the smallest ResNet shape, with the ImageNet stem: compiles in seconds
        c.image_size = 32
    return c
