"""`python -m flash_jax` is `python run.py`."""
import sys

from flash_jax.cli import main

sys.exit(main())
