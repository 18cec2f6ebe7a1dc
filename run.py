"""The command line, `python run.py --help`; the same as `python -m flash_jax` (flash_jax/cli.py)."""
import sys

from flash_jax.cli import build_parser, main, parse_config  # noqa: F401  (tests and scripts use them)

if __name__ == "__main__":
    sys.exit(main())
