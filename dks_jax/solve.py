"""``python -m dks_jax.solve``: a shim for ``python -m experiments.solve`` (the library is
``dks_jax.transforms``)."""

if __name__ == "__main__":
    import functools

    from experiments import cli, solve
    cli.main_wrapper(functools.partial(solve.main, prog="python -m dks_jax.solve"), "dks_jax.solve")
