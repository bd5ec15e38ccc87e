"""Packaging for dks_jax: Deep Kernel Shaping and Tailored Activation Transformations in JAX.

Install with the pinned tree the tests passed with: ``pip install -c constraints.txt -e ".[test]"``
(refresh it with ``scripts/freeze_constraints.py``; see the README).
"""

import setuptools

# Pins that are facts, not taste: kfac-jax 0.0.8 fails on jax/jaxlib >= 0.9.2, and dm-haiku's
# `[jax]` extra asks for jax >= 0.11, so haiku is installed bare beside the pinned jax.
INSTALL_REQUIRES = [
    "jax==0.9.1",
    "jaxlib==0.9.1",
    "dm-haiku==0.0.17",
    "kfac-jax==0.0.8",
    "optax>=0.2.4,<0.3",
    "ml-collections>=1.0",
    "absl-py>=2.0",
    "numpy>=1.26",
    "scipy>=1.11",
    "scikit-learn>=1.4",
    "orbax-checkpoint>=0.11,<0.13",
    "tensorflow-datasets>=4.9.8",
    "tensorboardX>=2.6",
    "matplotlib>=3.8",
    "tqdm>=4.66",
]

TEST_REQUIRES = [
    "pytest>=8",
    "pytest-xdist>=3.5",
    "mpmath>=1.3",  # high-precision closed forms in tests/test_compat.py
]

setuptools.setup(
    name="dks_jax",
    version="0.1.0",
    description=("Deep Kernel Shaping (DKS) and Tailored Activation Transformations (TAT) "
                 "for training deep vanilla networks in JAX/Haiku."),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # jax/jaxlib 0.9.1 publish wheels for CPython 3.11 to 3.13; constraints.txt pins the tested tree.
    python_requires=">=3.11,<3.14",
    packages=setuptools.find_packages(include=["dks_jax", "dks_jax.*", "experiments",
                                               "experiments.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
    license="Apache-2.0",
    classifiers=["Programming Language :: Python :: 3.11", "Programming Language :: Python :: 3.12",
                 "Programming Language :: Python :: 3.13"],
)
