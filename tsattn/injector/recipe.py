"""Recipes: what a feature changes in a target kind, as data, and the registry that ``tsattn-inject`` reads.

A recipe is a ``Recipe``: target kind, feature name, one-line description, options with defaults, templates to
add (``Template(source, dest)``) and the codemods to run per file, given as a function of the resolved options
that returns ``Edit``s (``Edit("run.py", AddArgparseArgument, flag="--x", after="--y", default=opts["x"])``).
A recipe module calls ``register(Recipe(...))`` at import; ``tsattn.injector.recipes`` imports every module of
its package, so adding a recipe is adding one module there (see ``tsattn/injector/__init__.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type

from libcst.codemod import Codemod

from tsattn.injector.errors import UsageError
from tsattn.injector.templates import Template


@dataclass(frozen=True)
class Option:
    """A recipe option, offered on the command line as ``--<name>`` (one flag shared by recipes that use the name).

    ``type`` converts the command-line text (float, int, str); ``choices`` restricts the values.
    """

    name: str
    type: Callable[[str], Any]
    default: Any
    help: str
    choices: Optional[Tuple[Any, ...]] = None

    def check(self, value: Any) -> Any:
        try:
            value = self.type(value)
        except (TypeError, ValueError):
            raise UsageError(f"--{self.name}: expected {getattr(self.type, '__name__', self.type)}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise UsageError(f"--{self.name}: {value!r} is not one of {', '.join(map(str, self.choices))}")
        return value


@dataclass(frozen=True)
class Edit:
    """Run ``codemod(context, **args)`` on the file ``path`` (POSIX, relative to the target's root)."""

    path: str
    codemod: Type[Codemod]
    args: Mapping[str, Any] = field(default_factory=dict)

    def __init__(self, path: str, codemod: Type[Codemod], **args: Any) -> None:
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "codemod", codemod)
        object.__setattr__(self, "args", dict(args))


@dataclass(frozen=True)
class Recipe:
    """One feature for one target kind. ``edits(options)`` returns the codemods to run, in order."""

    kind: str
    feature: str
    description: str
    edits: Callable[[Mapping[str, Any]], Sequence[Edit]]
    templates: Tuple[Template, ...] = ()
    options: Tuple[Option, ...] = ()
    notes: str = ""  # what a user of the target must know (shown by --list)
    validate: Optional[Callable[[Mapping[str, Any]], None]] = None  # raises UsageError for bad option values

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.feature}"

    def resolve(self, *layers: Mapping[str, Any]) -> Dict[str, Any]:
        """Option values: the defaults, overridden by each layer in turn (None values are skipped)."""
        known = {o.name: o for o in self.options}
        values = {o.name: o.default for o in self.options}
        for layer in layers:
            for name, value in layer.items():
                if value is None:
                    continue
                if name not in known:
                    raise UsageError(f"--{name} is not an option of {self.name}; its options: "
                                     f"{', '.join('--' + n for n in known) or 'none'}")
                values[name] = known[name].check(value)
        if self.validate is not None:
            self.validate(values)
        return values


_REGISTRY: Dict[Tuple[str, str], Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    """Add a recipe to the registry (a recipe module calls this at import). Returns it."""
    key = (recipe.kind, recipe.feature)
    if key in _REGISTRY and _REGISTRY[key] is not recipe:
        raise ValueError(f"recipe {recipe.name} is registered twice")
    from tsattn.injector.targets import KINDS

    if recipe.kind not in KINDS:
        raise ValueError(f"recipe {recipe.name}: unknown target kind {recipe.kind!r} (known: {', '.join(KINDS)})")
    _REGISTRY[key] = recipe
    return recipe


def all_recipes() -> List[Recipe]:
    """Every registered recipe (importing all recipe modules first), sorted by kind and feature."""
    from tsattn.injector import recipes

    recipes.load_all()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_recipe(kind: str, feature: str) -> Recipe:
    """The recipe for ``kind``/``feature``; ``UsageError`` listing what exists otherwise."""
    available = [r for r in all_recipes() if r.kind == kind]
    for r in available:
        if r.feature == feature:
            return r
    have = ", ".join(r.feature for r in available) or "none yet"
    raise UsageError(f"no feature {feature!r} for target kind {kind!r} (available: {have}); see --list")
