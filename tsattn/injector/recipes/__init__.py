"""Recipes, one module each; every module of this package is imported by ``load_all()``.

A module here registers its recipes at import (``register(Recipe(...))``); adding a recipe is adding a module
(how: ``tsattn/injector/__init__.py``; example: ``calf_wcmha.py``). Sub-packages (such as ``calf_templates``)
hold recipe templates and are not imported as recipes.
"""

from __future__ import annotations

import importlib
import pkgutil

_loaded = False


def load_all() -> None:
    """Import every recipe module of this package (once)."""
    global _loaded
    if _loaded:
        return
    for info in pkgutil.iter_modules(__path__):
        if not info.ispkg:
            importlib.import_module(f"{__name__}.{info.name}")
    _loaded = True
