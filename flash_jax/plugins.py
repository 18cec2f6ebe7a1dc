"""Plugins: Python files (or importable modules) that register methods or models from outside the
package, imported once before the settings that name them are read."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from flash_jax.config import ConfigError


def load_plugins(spec: str) -> None:
    """Import each comma-separated Python file (or importable module) once, so the methods and
    models it registers become flags and choices; a file's `if __name__ == "__main__"` part is not run."""
    for item in filter(None, (part.strip() for part in spec.split(","))):
        try:
            if item.endswith(".py"):
                name = f"flash_jax_plugin_{os.path.splitext(os.path.basename(item))[0]}"
                if name in sys.modules:
                    continue
                module_spec = importlib.util.spec_from_file_location(name, item)
                if module_spec is None or not os.path.isfile(item):
                    raise ConfigError(f"--plugin {item}: no such file")
                module = importlib.util.module_from_spec(module_spec)
                sys.modules[name] = module
                module_spec.loader.exec_module(module)
            else:
                importlib.import_module(item)
        except ConfigError:
            raise
        except Exception as err:  # the plugin's own failure, in one line
            raise ConfigError(f"--plugin {item}: importing it failed ({type(err).__name__}: {err})") from None
