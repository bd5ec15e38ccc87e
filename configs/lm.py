"""Character-level language modelling with decoder-only transformers on the CPython standard library.

Usage:
  python -m experiments.train --config=configs/lm.py --workdir=/tmp/lm
  python -m experiments.train --config=configs/lm.py:block=pre_ln,attention=softmax --workdir=/tmp/lm_std
  python -m experiments.train --config=configs/lm.py:depth=24,optimizer=kfac --workdir=/tmp/lm24

Options (``:a=b,...``):
  ``block``: vanilla (no skips, no normalization: the paper's vanilla transformer), norm_only, skips_only
  (shortcut weight 0.8), pre_ln (the standard transformer: the baseline);
  ``attention``: espa, uspa, value_skipinit, softmax (softmax attention without shaping, which is
  what a vanilla transformer collapses with);
  ``depth`` (blocks), ``width``, ``optimizer`` (adam, sgd, kfac), ``tiny``.

The MLP blocks use TAT Leaky ReLU (eta 0.5 over the whole transformer) except in the pre-LN baseline,
which uses plain ReLU with standard initialization. Data: ``../shared/data/cpython_stdlib`` (train / valid /
test files); the summary reports bits per character on the validation and test splits
(``test_bits_per_character``). Adam at peak rate 1e-3 with a short warm-up is a rate that trains every
block type here; sweep it with ``python -m experiments.sweep`` (validation bits per character) for a table.
"""

from dks_jax import configlib

BLOCKS = ("vanilla", "norm_only", "skips_only", "pre_ln")
ATTENTION = ("espa", "uspa", "value_skipinit", "softmax")


def get_config(arg: str = ""):
    """Returns the locked config; see the module docstring for the options in ``arg``."""
    o = configlib.parse_arg(arg, block="vanilla", attention="espa", depth=6, width=128,
                            optimizer="adam", tiny=False)
    for key, valid in (("block", BLOCKS), ("attention", ATTENTION)):
        if o[key] not in valid:
            raise configlib.ConfigError(f"{key} must be one of {', '.join(valid)}, got {o[key]!r}.")
    c = configlib.base_config()
    c.dataset = "cpython_chars"
    c.model = "transformer"
    c.depth = o["depth"]
    c.width = o["width"]
    c.seq_len = 128
    c.transformer.num_heads = 4
    c.transformer.mlp_ratio = 4
    c.transformer.block = o["block"]
    c.transformer.attention = o["attention"]
    c.transformer.causal = True
    c.shortcut_weight = 0.8 if o["block"] == "skips_only" else 0.0
    if o["block"] == "pre_ln":
        c.method, c.activation, c.init = "untransformed", "relu", "lecun_normal"
    else:
        c.method, c.activation = "TAT", "leaky_relu"
        # eta must stay below the transformer's maximal C(0) (reached with ReLU): 0.49 at 2 blocks, 0.78 at
        # 6, 0.90 at 12; 0.5 is reachable from 3 blocks up, so one value serves every depth of the table.
        c.tat.c_val_0_target = 0.5
    c.optimizer.name = o["optimizer"]
    c.learning_rate = {"adam": 1e-3, "sgd": 0.1, "kfac": 1e-3}[o["optimizer"]]
    c.optimizer.kfac.damping = 1e-2
    c.schedule.name = "cosine"
    c.schedule.warmup_epochs = 0.02
    c.weight_decay = 0.0
    c.batch_size = 32
    c.eval_batch_size = 256  # the splits hold ~600k characters: fewer, larger evaluation batches
    c.num_epochs = 0.5
    c.validation_fraction = 0.0  # the corpus ships its own validation split
    c.augment = False
    c.log_every_steps = 50
    c.eval_every_steps = 500
    if o["tiny"]:
        configlib.tiny(c)
        c.depth, c.width, c.seq_len = min(c.depth, 2), 32, 32
        c.tat.c_val_0_target = 0.3  # two blocks cannot reach eta 0.9 (their maximal C(0) is 0.49)
    return c
