"""Built-in Caffe layers: every module in this package registers its classes on import.

Adding a layer type means adding (or editing) one module here; nothing else changes.
"""

from __future__ import annotations

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
