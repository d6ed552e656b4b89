"""argparse: ``AddArgparseArgument``."""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import libcst as cst
import libcst.matchers as m
from libcst.codemod import CodemodContext

from tsattn.injector.codemods.base import NO_VALUE, AnchoredCodemod, _dotted, _keyword, literal


class _StatementFinder(cst.CSTVisitor):
    """Whether any simple statement, at any depth, satisfies ``test`` (expressions are not visited)."""

    def __init__(self, test) -> None:
        super().__init__()
        self.test, self.found = test, False

    def visit_SimpleStatementLine(self, node: cst.SimpleStatementLine) -> bool:
        self.found = self.found or self.test(node)
        return False


_ADD_ARGUMENT = m.SimpleStatementLine(
    body=[m.Expr(value=m.Call(func=m.Attribute(attr=m.Name("add_argument"))))]
)


def _argument_flags(statement: cst.CSTNode) -> Tuple[str, ...]:
    """The option strings of an ``X.add_argument('--a', '-b', ...)`` statement (empty for anything else)."""
    if not isinstance(statement, cst.SimpleStatementLine) or not m.matches(statement, _ADD_ARGUMENT):
        return ()  # (the isinstance check first: matching is costly and most statements are not lines)
    flags = []
    for arg in statement.body[0].value.args:
        if arg.keyword is not None or arg.star or not isinstance(arg.value, cst.SimpleString):
            break
        flags.append(arg.value.evaluated_value)
    return tuple(flags)


class AddArgparseArgument(AnchoredCodemod):
    """``<parser>.add_argument(flag, action=..., type=..., default=..., choices=..., help=...)`` after the
    statement that adds the argument ``after`` (same parser object); an existing ``flag`` gets these keywords
    instead.

    ``action`` is an argparse action's name (``"store_true"``: a flag that takes no value; written right after
    the option string); ``type`` is a name (``"float"``); ``default``, ``choices`` and ``help`` are Python values
    (``NO_VALUE`` or None leaves a keyword out).
    """

    DESCRIPTION = "Add an argparse argument next to an anchor argument, or update it."

    def __init__(
        self,
        context: CodemodContext,
        flag: str,
        after: str,
        type: Optional[str] = None,
        default: Any = NO_VALUE,
        choices: Optional[Sequence[Any]] = None,
        help: Optional[str] = None,
        action: Optional[str] = None,
    ) -> None:
        super().__init__(context)
        self.flag, self.after = flag, after
        self.type, self.default, self.choices, self.help = type, default, choices, help
        self.action = action
        self.exists = False

    def visit_Module(self, node: cst.Module) -> None:
        super().visit_Module(node)
        finder = _StatementFinder(lambda s: self.flag in _argument_flags(s))
        node.visit(finder)
        self.exists = self.found = finder.found

    def _call(self, func: cst.BaseExpression) -> cst.Call:
        args = [cst.Arg(literal(self.flag, self.quote))]
        if self.action is not None:
            args.append(_keyword("action", literal(self.action, self.quote)))
        if self.type is not None:
            args.append(_keyword("type", _dotted(self.type)))
        if self.default is not NO_VALUE:
            args.append(_keyword("default", literal(self.default, self.quote)))
        if self.choices is not None:
            args.append(_keyword("choices", literal(list(self.choices), self.quote)))
        if self.help is not None:
            args.append(_keyword("help", literal(self.help, self.quote)))
        return cst.Call(func=func, args=args)

    def _edit(self, body: Sequence[cst.CSTNode]) -> List[cst.CSTNode]:
        out: List[cst.CSTNode] = []
        for statement in body:
            flags = _argument_flags(statement)
            if self.exists and self.flag in flags:
                expr = statement.body[0]
                statement = statement.with_changes(body=[expr.with_changes(value=self._call(expr.value.func))])
            out.append(statement)
            if not self.exists and self.after in flags:
                self.found = True
                out.append(cst.SimpleStatementLine(body=[cst.Expr(self._call(statement.body[0].value.func))]))
        return out

    def leave_IndentedBlock(self, original_node: cst.IndentedBlock, updated_node: cst.IndentedBlock) -> cst.IndentedBlock:
        return updated_node.with_changes(body=self._edit(updated_node.body))

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        return updated_node.with_changes(body=self._edit(updated_node.body))

    def anchor(self) -> str:
        return f"add_argument({self.after!r})"
