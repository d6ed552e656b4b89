"""Classes and functions: ``AddClass`` (top level) and ``AddMethod``."""

from __future__ import annotations

from typing import Callable, List, Optional, Union

import libcst as cst
import libcst.matchers as m
from libcst.codemod import CodemodContext

from tsattn.injector.codemods.base import AnchoredCodemod, ModuleLevelCodemod, _blank_lines, _def_name, _parse_snippet


def _block_body(node: Union[cst.Module, cst.IndentedBlock]) -> List[cst.CSTNode]:
    return list(node.body)


def _place_definition(body: List[cst.CSTNode], new: cst.CSTNode, name: str, after: Optional[str], blank_lines: int,
                      missing: Callable[[], Exception]) -> List[cst.CSTNode]:
    """``body`` with the definition ``new`` (named ``name``): in place of an existing definition of that name
    (keeping its leading lines), else after the definition ``after`` (``missing()`` is raised when there is none),
    else at the end; an inserted one is preceded by ``blank_lines`` blank lines."""
    names = [_def_name(s) for s in body]
    if name in names:
        i = names.index(name)
        body[i] = new.with_changes(leading_lines=body[i].leading_lines)
    elif after is not None:
        if after not in names:
            raise missing()
        body.insert(names.index(after) + 1, new.with_changes(leading_lines=_blank_lines(blank_lines)))
    else:
        body.append(new.with_changes(leading_lines=_blank_lines(blank_lines)))
    return body



class AddClass(ModuleLevelCodemod):
    """A top-level class or function (``source``: exactly one definition) after the definition ``after``.

    Without ``after`` it goes at the end of the module. An existing definition of the same name is replaced
    in place (this is how a new option value updates it).
    """

    DESCRIPTION = "Add or replace a top-level class or function."

    def __init__(self, context: CodemodContext, source: str, after: Optional[str] = None) -> None:
        super().__init__(context)
        self.source, self.after = source, after
        body = cst.parse_module(source).body
        if len(body) != 1 or _def_name(body[0]) is None:
            raise ValueError("AddClass: source must hold exactly one class or function definition")
        self.name = _def_name(body[0])

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        body = _place_definition(_block_body(updated_node), _parse_snippet(self.source, self.quote).body[0],
                                 self.name, self.after, blank_lines=2,
                                 missing=self.missing)
        self.found = True
        return updated_node.with_changes(body=body)

    def anchor(self) -> str:
        return f"top-level class or def {self.after!r}"


class AddMethod(AnchoredCodemod):
    """A method (``source``: one ``def``) in top-level class ``class_name``, after method ``after`` (else last);
    replaced in place when the class already has a method of that name."""

    DESCRIPTION = "Add or replace a method of a class."

    def __init__(self, context: CodemodContext, class_name: str, source: str, after: Optional[str] = None) -> None:
        super().__init__(context)
        self.class_name, self.source, self.after = class_name, source, after
        body = cst.parse_module(source).body
        if len(body) != 1 or not m.matches(body[0], m.FunctionDef()):
            raise ValueError("AddMethod: source must hold exactly one function definition")
        self.name = body[0].name.value

    def anchor(self) -> str:
        return f"class {self.class_name}"

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        outer = self.scope
        super().visit_ClassDef(node)
        return not outer and node.name.value == self.class_name

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        super().visit_FunctionDef(node)
        return False

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        super().leave_ClassDef(original_node, updated_node)
        if self.scope or updated_node.name.value != self.class_name:
            return updated_node
        self.found = True
        body = _place_definition(_block_body(updated_node.body), _parse_snippet(self.source, self.quote).body[0],
                                 self.name, self.after, blank_lines=1,
                                 missing=lambda: self.missing(f"method {self.class_name}.{self.after}"))
        return updated_node.with_changes(body=updated_node.body.with_changes(body=body))
