"""The default experiment: a TAT vanilla MLP (Leaky ReLU) on scikit-learn's digits, seconds on a CPU.

Usage:
  python -m experiments.train --config=configs/default.py --workdir=/tmp/dks_default
  python -m experiments.train --config=configs/default.py:tiny --workdir=/tmp/t --config.depth=20
  python -m experiments.sweep --config=configs/default.py --workdir=sweeps/digits \
      --config.validation_fraction=0.2 --parallel=2 --threads_per_point=1   # the grid of get_sweep

Options (``:a=b,flag``): ``tiny`` (a few real steps on the CPU, used by the tests).
"""

from dks_jax import configlib


def get_config(arg: str = ""):
    """Returns the locked config; see the module docstring for the options in ``arg``."""
    opts = configlib.parse_arg(arg, tiny=False)
    c = configlib.base_config()
    c.dataset = "digits"
    c.model = "mlp"
    c.depth = 20
    c.width = 256
    c.activation = "leaky_relu"
    c.method = "TAT"
    c.optimizer.name = "sgd"
    c.learning_rate = 0.005
    c.schedule.warmup_epochs = 2.0
    c.weight_decay = 1e-3
    c.batch_size = 128
    c.num_epochs = 60.0
    c.eval_every_steps = 55  # 5 epochs of 11 steps
    c.checkpoint_every_steps = 110
    if opts["tiny"]:
        configlib.tiny(c, depth=16)  # eta = 0.9 needs >= 13 Leaky ReLU layers
    return c


def get_sweep(arg: str = ""):
    """The grid the defaults above were chosen from (``python -m experiments.sweep``, see the docstring).

    Chosen on 20% of the training images held out, by the best mean validation accuracy over two seeds.
    """
    del arg
    return {"learning_rate": [0.005, 0.01], "depth": [20, 50], "weight_decay": [1e-4, 1e-3], "seed": [0, 1]}
