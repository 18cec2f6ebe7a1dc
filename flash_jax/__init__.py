"""flash_jax: FLASH and the sparse federated-learning baselines around it, in JAX/Flax."""
import os

# On CPU, XNNPACK kernels for XLA's dots and convolutions make a lone MNISTNet training step about 1.4x
# and a federated round about 5% faster (benchmarks/RESULTS.md). XLA reads its flags when the backend
# starts, so this runs before any computation; a user's own setting of the flag wins, and
# FLASH_JAX_XNNPACK=0 opts out.
_XNNPACK_FLAG = ("--xla_cpu_experimental_xnn_fusion_type="
                 "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT")
if os.environ.get("FLASH_JAX_XNNPACK", "1") != "0" and "xla_cpu_experimental_xnn_fusion_type" not in os.environ.get(
        "XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_XNNPACK_FLAG}".strip()

from flash_jax.config import Config, ConfigError  # noqa: E402  (after the XLA flag above)
from flash_jax.fl.loop import run  # noqa: E402
from flash_jax.fl.methods import Knob, Method, register_method  # noqa: E402
from flash_jax.models import register_model  # noqa: E402
from flash_jax import methods  # noqa: E402,F401  (registers the built-in methods, before any of the user's)

__all__ = ["Config", "ConfigError", "Knob", "Method", "register_method", "register_model", "run"]
