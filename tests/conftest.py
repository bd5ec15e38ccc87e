"""Test-wide settings."""

import os

# Tests measure real solves: the optional on-disk cache of solved parameters stays off, for this
# process and every subprocess a test starts (tests of the cache turn it on in a temporary folder).
os.environ["DKS_JAX_CACHE"] = "off"
