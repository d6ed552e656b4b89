"""Imports: ``AddImport`` and ``RewriteImportFrom``."""

from __future__ import annotations

from typing import Sequence

import libcst as cst
import libcst.matchers as m
from libcst.codemod import CodemodContext
from libcst.codemod.visitors import AddImportsVisitor, ImportItem

from tsattn.injector.codemods.base import _Codemod, _dotted, _name


_IMPORT_OR_DOCSTRING = m.SimpleStatementLine(body=[m.OneOf(m.Import(), m.ImportFrom(), m.Expr(m.SimpleString()))])


def _import_block(body: Sequence[cst.CSTNode]) -> int:
    """Length of the module's leading block of docstring and import statements (what AddImportsVisitor edits)."""
    n = 0
    for statement in body:
        if not m.matches(statement, _IMPORT_OR_DOCSTRING):
            break
        n += 1
    return n


class AddImport(_Codemod):
    """``from MODULE import NAMES`` (``import MODULE`` without names), merged into an existing import of MODULE.

    A leading dot names a module relative to the file's package (``AddImport(ctx, ".PowerformerGPT2",
    ["PowerformerGPT2Model"])``); when the context knows the package (``full_package_name``, as the engine sets
    it) libcst writes the import absolute (``from models.PowerformerGPT2 import ...``), and recognises it on a
    re-run. libcst's ``AddImportsVisitor`` does the work, on the module's leading block of imports (the only
    part it reads or edits), so that a large module is not traversed.
    """

    DESCRIPTION = "Add an import, merged with an existing one of the same module."

    def __init__(self, context: CodemodContext, module: str, names: Sequence[str] = ()) -> None:
        super().__init__(context)
        relative = len(module) - len(module.lstrip("."))
        self.imports = [ImportItem(module.lstrip("."), name, None, relative) for name in (list(names) or [None])]

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        n = _import_block(tree.body)
        head = AddImportsVisitor(self.context, self.imports).transform_module(tree.with_changes(body=tree.body[:n]))
        return tree.with_changes(body=[*head.body, *tree.body[n:]])




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
