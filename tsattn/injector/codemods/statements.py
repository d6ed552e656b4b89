"""Statements and expressions: ``InsertStatements``, ``ReplaceExpression``, ``ExtendTuple``."""

from __future__ import annotations

import ast
from typing import Any, List, Optional, Sequence, Union

import libcst as cst
import libcst.matchers as m
from libcst.codemod import CodemodContext

from tsattn.injector.codemods.base import (ModuleLevelCodemod, ScopedCodemod, _code, _expression_python, _MatchQuotes,
                                          _parse_snippet, _python, literal, pending_import_position)


class ReplaceExpression(ScopedCodemod):
    """Replace every expression ``old`` inside ``scope`` (``""``: module level; nested blocks, comprehensions and
    lambdas included, nested defs and classes not) by the expression ``new``.

    Expressions are compared as Python (their AST): formatting, comments, parentheses and a trailing comma do not
    matter. ``new`` is written as given (its quotes follow the file); continuation lines are relative to the
    statement's indentation. Idempotent: where no ``old`` is left, an expression that is ``new`` with other
    constants is updated to ``new``, and ``new`` itself is left alone; neither present raises ``AnchorNotFound``.
    """

    DESCRIPTION = "Replace an expression (compared as Python) by another."

    def __init__(self, context: CodemodContext, scope: str, old: str, new: str) -> None:
        super().__init__(context, scope)
        self.old, self.new = old, new
        self.old_python = _expression_python(old)
        self.new_python = _expression_python(new)
        self.new_shape = _expression_python(new, blank_constants=True)
        self.old_type = type(cst.parse_expression(old.strip()))
        self.new_type = type(cst.parse_expression(new.strip()))

    def anchor(self) -> str:
        return f"expression `{self.old.strip()}` in {self.where}"

    def on_leave(self, original_node: cst.CSTNode, updated_node: cst.CSTNode):
        result = super().on_leave(original_node, updated_node)
        if not self.in_scope or not isinstance(result, (self.old_type, self.new_type)):
            return result
        code = cst.Module(body=[]).code_for_node(result.with_changes(lpar=[], rpar=[]))
        try:
            here = _expression_python(code)
        except SyntaxError:  # e.g. a bare starred element
            return result
        if here == self.old_python or (here != self.new_python and
                                       _expression_python(code, blank_constants=True) == self.new_shape):
            self.found = True
            new = cst.parse_expression(self.new.strip()).visit(_MatchQuotes(self.quote))
            return new.with_changes(lpar=result.lpar, rpar=result.rpar) if hasattr(new, "lpar") else new
        if here == self.new_python:
            self.found = True
        return result


class ExtendTuple(ModuleLevelCodemod):
    """The module-level assignment ``name = (...)``, a tuple of literals, holds every one of ``values``: the
    missing ones are appended, in order, the others kept where they are (so several recipes can each add their
    own to one registry). Without the assignment, ``name = (values...)`` is inserted after the module-level
    statement ``after`` (compared as Python), with ``comment`` as a comment line above it when given. ``after``
    may be an import that an earlier codemod of the same pass queued (``AddImport``): the tuple then goes where
    that import will be added, the end of the leading import block, so that it follows it."""

    DESCRIPTION = "Add values to a module-level tuple, or create it."

    def __init__(self, context: CodemodContext, name: str, values: Sequence[Any], after: str,
                 comment: Optional[str] = None) -> None:
        super().__init__(context)
        self.name, self.values, self.comment = name, tuple(values), comment
        self.after, self.after_python = after, _python(after)

    def _assignment(self, statement: cst.CSTNode) -> Optional[cst.Assign]:
        if isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1 \
                and isinstance(statement.body[0], cst.Assign) and len(statement.body[0].targets) == 1 \
                and m.matches(statement.body[0].targets[0].target, m.Name(self.name)):
            return statement.body[0]
        return None

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        body = list(updated_node.body)
        for i, statement in enumerate(body):
            assign = self._assignment(statement)
            if assign is None:
                continue
            try:
                current = ast.literal_eval(cst.Module(body=[]).code_for_node(assign.value))
            except ValueError:
                raise self.missing(f"{self.name} = (...) holding only literals") from None
            if not isinstance(current, tuple):
                raise self.missing(f"{self.name} = (...) as a tuple (it is a {type(current).__name__})")
            self.found = True
            missing = [v for v in self.values if v not in current]
            if missing:
                value = literal(current + tuple(missing), self.quote)
                body[i] = statement.with_changes(body=[assign.with_changes(value=value)])
            return updated_node.with_changes(body=body)
        at = next((i + 1 for i, s in enumerate(body) if _python(_code(s)) == self.after_python), None)
        if at is None:  # an import that this pass queued stands where it will be added
            at = pending_import_position(self.context, body, self.after)
        if at is None:
            return updated_node
        new = cst.SimpleStatementLine(body=[cst.Assign(
            targets=[cst.AssignTarget(cst.Name(self.name))], value=literal(self.values, self.quote))])
        if self.comment:
            new = new.with_changes(leading_lines=[cst.EmptyLine(), cst.EmptyLine(comment=cst.Comment("# " + self.comment))])
        body.insert(at, new)
        self.found = True
        return updated_node.with_changes(body=body)

    def anchor(self) -> str:
        return f"module-level statement `{self.after.strip()}`"


class InsertStatements(ScopedCodemod):
    """Insert ``statements`` right after the statement ``after`` in the body of ``scope`` (``""``: module level),
    or in a block nested in it (the body of a loop, ``if``, ``with`` or ``try``; not a nested def or class).

    ``after`` is compared as Python (its AST), so formatting and comments do not matter. A list of statements
    means after the last of them that the block holds (e.g. after statements another edit may have inserted
    after the same anchor, so that the order does not depend on which ran first). If the same statements,
    constants aside, already follow the (first) anchor anywhere in its block, they are updated in place and
    nothing is added; otherwise they are inserted. Every block of the scope that holds an anchor is edited.
    """

    DESCRIPTION = "Insert statements after an anchor statement, or update them."

    def __init__(self, context: CodemodContext, scope: str, after: Union[str, Sequence[str]], statements: str) -> None:
        super().__init__(context, scope)
        anchors = [after] if isinstance(after, str) else list(after)
        if not anchors:
            raise ValueError("InsertStatements: after must name at least one statement")
        self.statements = statements
        self.after_source = " or ".join(f"`{a.strip()}`" for a in anchors)
        self.anchors = {_python(a) for a in anchors}
        # anchors that are simple statements are only compared with simple statements (cheaper)
        self.simple = all(isinstance(cst.parse_module(a.strip()).body[0], cst.SimpleStatementLine) for a in anchors)
        snippet = cst.parse_module(statements).body
        self.count = len(snippet)
        self.shape = [_python(_code(s), True) for s in snippet]

    def anchor(self) -> str:
        return f"statement {self.after_source} in {self.where}"

    def _is_anchor(self, statement: cst.CSTNode) -> bool:
        if self.simple and not isinstance(statement, cst.SimpleStatementLine):
            return False
        return _python(_code(statement)) in self.anchors

    def _edit(self, body: Sequence[cst.CSTNode]) -> List[cst.CSTNode]:
        body = list(body)
        at = [i for i, statement in enumerate(body) if self._is_anchor(statement)]
        if not at:
            return body
        self.found = True
        new = list(_parse_snippet(self.statements, self.quote).body)
        shapes = [_python(_code(s), True) for s in body[at[0] + 1 :]]
        for j in range(len(shapes) - self.count + 1):
            if shapes[j : j + self.count] == self.shape:
                i = at[0] + 1 + j
                new = [n.with_changes(leading_lines=old.leading_lines) for n, old in zip(new, body[i : i + self.count])]
                return body[:i] + new + body[i + self.count :]
        return body[: at[-1] + 1] + new + body[at[-1] + 1 :]

    def leave_IndentedBlock(self, original_node: cst.IndentedBlock, updated_node: cst.IndentedBlock) -> cst.IndentedBlock:
        if not self.in_scope:
            return updated_node
        return updated_node.with_changes(body=self._edit(updated_node.body))

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if self.target_scope == "":
            updated_node = updated_node.with_changes(body=self._edit(updated_node.body))
        return updated_node
