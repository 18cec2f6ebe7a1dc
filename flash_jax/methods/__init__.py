"""The built-in methods, one module each (docs/methods.md describes each); importing this package
registers them, in the order --help lists them.

A new method is one more module like these, registered with `flash_jax.register_method`
(README: "Adding a method").
"""
from flash_jax.methods import dense, pdst, spdst, jmwst, nst, feddst  # noqa: F401
from flash_jax.methods import topk, sparsyfed, prunefl  # noqa: F401
