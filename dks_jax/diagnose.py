"""``python -m dks_jax.diagnose``: a shim for ``python -m experiments.diagnose`` (the library is
``dks_jax.diagnostics``)."""

if __name__ == "__main__":
    import functools

    from experiments import cli, diagnose
    cli.main_wrapper(functools.partial(diagnose.main, prog="python -m dks_jax.diagnose"), "dks_jax.diagnose")
