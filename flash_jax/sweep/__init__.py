"""Sweeps: many runs from one TOML file (grid.py), run a few at a time and resumed after any stop
(runner.py), summarised with confidence intervals over seeds (report.py, stats.py).

    python -m flash_jax.sweep FILE.toml --out DIR [--jobs N] [--shard I/N] [--list] [--summarize]
    python -m flash_jax.sweep.report DIR
"""
