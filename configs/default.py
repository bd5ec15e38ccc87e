"""The default experiment: a TAT vanilla MLP (Leaky ReLU) on scikit-learn's digits, seconds on a CPU.

Usage:
  python -m experiments.train --config=configs/default.py --workdir=/tmp/dks_default
  python -m experiments.train --config=configs/default.py:optimizer=sgd --workdir=/tmp/dks_default_sgd
  python -m experiments.train --config=configs/default.py:tiny --workdir=/tmp/t --config.depth=20
  python -m experiments.sweep --config=configs/default.py --workdir=sweeps/digits \
      --config.validation_fraction=0.2   # the grid of get_sweep, one point at a time

Options (``:a=b,flag``): ``optimizer`` (kfac, the default: the papers' optimizer, best on validation; sgd:
4x cheaper per step, 1 point behind), ``tiny`` (a few real steps on the CPU, used by the tests).
"""

from dks_jax import configlib

# Each optimizer's settings, chosen by `get_sweep`'s grid on 20% of the training images held out (the best
# mean validation accuracy over two seeds; the test split never chooses). Fields not listed are shared.
SETTINGS = {
    "kfac": {"learning_rate": 0.003, "optimizer.kfac.damping": 0.1, "label_smoothing": 0.1},
    "sgd": {"learning_rate": 0.005, "label_smoothing": 0.0},
}
# The grids the settings above were chosen from (each with seeds 0 and 1).
GRIDS = {
    "kfac": {"learning_rate": [0.001, 0.003, 0.01], "optimizer.kfac.damping": [0.03, 0.1, 0.3],
             "label_smoothing": [0.0, 0.1]},
    "sgd": {"learning_rate": [0.005, 0.01], "depth": [20, 50], "weight_decay": [1e-4, 1e-3]},
}


def _options(arg: str) -> dict:
    opts = configlib.parse_arg(arg, optimizer="kfac", tiny=False)
    if opts["optimizer"] not in SETTINGS:
        raise configlib.ConfigError(f"config option optimizer={opts['optimizer']!r} must be one of "
                                    f"{', '.join(sorted(SETTINGS))}.")
    return opts


def get_config(arg: str = ""):
    """Returns the locked config; see the module docstring for the options in ``arg``."""
    opts = _options(arg)
    c = configlib.base_config()
    c.dataset = "digits"
    c.model = "mlp"
    c.depth = 20
    c.width = 256
    c.activation = "leaky_relu"
    c.method = "TAT"
    c.optimizer.name = opts["optimizer"]
    c.schedule.warmup_epochs = 2.0
    c.weight_decay = 1e-3
    c.batch_size = 128
    c.num_epochs = 60.0  # with K-FAC, 45-47 s on 2 cores: the budget the README promises is 60 s
    configlib.set_fields(c, SETTINGS[opts["optimizer"]])
    c.eval_every_steps = 55  # 5 epochs of 11 steps
    c.checkpoint_every_steps = 110
    if opts["tiny"]:
        configlib.tiny(c, depth=16)  # eta = 0.9 needs >= 13 Leaky ReLU layers
    return c


def get_sweep(arg: str = ""):
    """The grid the optimizer's settings were chosen from (``python -m experiments.sweep``, see above)."""
    return {**GRIDS[_options(arg)["optimizer"]], "seed": [0, 1]}
