"""Calls and their arguments: ``WrapCall`` and ``SetKeyword``."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import libcst as cst
import libcst.matchers as m
from libcst.codemod import CodemodContext
from libcst.helpers import parse_template_expression

from tsattn.injector.codemods.base import ScopedCodemod, _keyword, literal, _MatchQuotes, _name, _python, _separator


_PLACEHOLDER = "_tsattn_wrapped_call_"


class WrapCall(ScopedCodemod):
    """In ``target = callee(...)`` inside ``scope``, replace the call by ``template``.

    ``template`` is a libcst template expression: ``{call}`` stands for the original call, ``{name}`` for the
    literal ``values[name]``; e.g. ``"New.from_old({call}, alpha=getattr(configs, 'alpha', {alpha}))"``, or a
    conditional expression ``"(Other(x) if flag else {call})"`` (its layout is kept as written). When the
    assignment already holds the template (its constants aside) around one ``callee(...)`` call, it is rebuilt
    around that original call, so new values replace old ones.
    """

    DESCRIPTION = "Replace a constructor call (wrap it in a template expression), or update the wrapper."

    def __init__(
        self,
        context: CodemodContext,
        scope: str,
        target: str,
        callee: str,
        template: str,
        values: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__(context, scope)
        self.target, self.callee, self.template = target, callee, template
        self.values = dict(values or {})
        probe = self._build(cst.Name(_PLACEHOLDER), '"')
        code = cst.Module(body=[]).code_for_node(probe)
        if code.count(_PLACEHOLDER) != 1:
            raise ValueError("WrapCall: template must use {call} exactly once")
        self.shape = _python(code, blank_constants=True)

    def anchor(self) -> str:
        return f"{self.target} = {self.callee}(...) in {self.where}"

    def _build(self, call: cst.BaseExpression, quote: str) -> cst.BaseExpression:
        values = {k: literal(v, quote) for k, v in self.values.items()}
        tree = parse_template_expression(self.template, call=cst.Name(_PLACEHOLDER), **values)
        tree = tree.visit(_MatchQuotes(quote))
        return tree.deep_replace(m.findall(tree, m.Name(_PLACEHOLDER))[0], call)

    def _is_call_to(self, node: cst.CSTNode, name: str) -> bool:
        return isinstance(node, cst.Call) and _name(node.func) == name

    def _wrapped_call(self, value: cst.BaseExpression) -> Optional[cst.Call]:
        """The original call inside ``value`` if ``value`` is the template (constants aside) around it."""
        calls = [c for c in m.findall(value, m.Call()) if self._is_call_to(c, self.callee)]
        if len(calls) != 1:
            return None
        shape = cst.Module(body=[]).code_for_node(value.deep_replace(calls[0], cst.Name(_PLACEHOLDER)))
        return calls[0] if _python(shape, blank_constants=True) == self.shape else None

    def leave_Assign(self, original_node: cst.Assign, updated_node: cst.Assign) -> cst.Assign:
        if not self.in_scope or len(updated_node.targets) != 1:
            return updated_node
        if _name(updated_node.targets[0].target) != self.target:
            return updated_node
        value = updated_node.value
        inner = value if self._is_call_to(value, self.callee) else self._wrapped_call(value)
        if inner is None:
            return updated_node
        self.found = True
        return updated_node.with_changes(value=self._build(inner, self.quote))


class SetKeyword(ScopedCodemod):
    """Add or update ``keyword=value`` in every call to ``callee`` (within ``scope`` when given).

    ``keyword="**"`` is the call's ``**value`` argument (added last, or its value updated).
    """

    DESCRIPTION = "Add or update a keyword argument of calls."

    def __init__(self, context: CodemodContext, callee: str, keyword: str, value: Any,
                 scope: Optional[str] = None) -> None:
        super().__init__(context, scope)
        self.callee, self.keyword, self.value = callee, keyword, value

    def anchor(self) -> str:
        return f"call {self.callee}(...)" + (f" in {self.target_scope}" if self.target_scope else "")

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.Call:
        if _name(updated_node.func) != self.callee:
            return updated_node
        if not self.in_scope:
            return updated_node
        self.found = True
        value = literal(self.value, self.quote)
        args = list(updated_node.args)
        for i, arg in enumerate(args):
            if self.keyword == "**" and arg.star == "**":
                args[i] = arg.with_changes(value=value)
                break
            if arg.keyword is not None and arg.keyword.value == self.keyword:
                args[i] = arg.with_changes(value=value)
                break
        else:
            new = cst.Arg(value=value, star="**") if self.keyword == "**" else _keyword(self.keyword, value)
            if args and isinstance(args[-1].comma, cst.Comma):
                # a trailing comma (e.g. one argument per line): the new argument takes it, and the old last one
                # the separator the others use, so that the layout is kept
                new = new.with_changes(comma=args[-1].comma)
                args[-1] = args[-1].with_changes(comma=_separator(args))
            elif args:  # the new argument takes what followed the old last one (e.g. a line break before ")")
                new = new.with_changes(whitespace_after_arg=args[-1].whitespace_after_arg)
                args[-1] = args[-1].with_changes(whitespace_after_arg=cst.SimpleWhitespace(""))
            args.append(new)
        return updated_node.with_changes(args=args)
