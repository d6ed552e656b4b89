"""Imports: ``AddImport`` and ``RewriteImportFrom``."""

from __future__ import annotations

from typing import Sequence

import libcst as cst
from libcst.codemod import CodemodContext
from libcst.codemod.visitors import AddImportsVisitor

from tsattn.injector.codemods.base import _Codemod, _dotted, _name


class AddImport(_Codemod):
    """``from MODULE import NAMES`` (``import MODULE`` without names), merged into an existing import of MODULE.

    A leading dot names a module relative to the file's package (``AddImport(ctx, ".PowerformerGPT2",
    ["PowerformerGPT2Model"])``); when the context knows the package (``full_package_name``, as the engine sets
    it) libcst writes the import absolute (``from models.PowerformerGPT2 import ...``), and recognises it on a
    re-run.

    The import is queued in the context (``AddImportsVisitor.add_needed_import``), as libcst's own codemods do,
    and applied when the file's pass ends (``FilePass``; run on its own, when this codemod ends): all the imports
    of a pass at once, each only once, by libcst's ``AddImportsVisitor`` on the module's leading block of imports
    (the only part it reads or edits, so that a large module is not traversed).
    """

    DESCRIPTION = "Add an import, merged with an existing one of the same module."

    def __init__(self, context: CodemodContext, module: str, names: Sequence[str] = ()) -> None:
        super().__init__(context)
        self.import_module, self.import_names = module, list(names)

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        relative = len(self.import_module) - len(self.import_module.lstrip("."))
        for name in self.import_names or [None]:
            AddImportsVisitor.add_needed_import(self.context, self.import_module.lstrip("."), name, relative=relative)
        return tree




class RewriteImportFrom(_Codemod):
    """Change ``from OLD import ...`` to ``from NEW import ...``; leading dots make a module relative."""

    DESCRIPTION = "Rename the module of from-imports (absolute or relative)."

    def __init__(self, context: CodemodContext, old: str, new: str) -> None:
        super().__init__(context)
        self.old, self.new = old, new

    def descend(self, node: cst.SimpleStatementLine) -> bool:
        return any(isinstance(s, cst.ImportFrom) for s in node.body)

    def leave_ImportFrom(self, original_node: cst.ImportFrom, updated_node: cst.ImportFrom) -> cst.ImportFrom:
        name = "." * len(updated_node.relative) + (_name(updated_node.module) or "")
        if name != self.old:
            return updated_node
        module = self.new.lstrip(".")
        dots = [cst.Dot() for _ in range(len(self.new) - len(module))]
        return updated_node.with_changes(relative=dots, module=_dotted(module) if module else None)
