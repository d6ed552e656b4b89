"""Function parameters: ``SetParameterDefault`` and ``AddKeywordsParameter``."""

from __future__ import annotations

from typing import Any, Tuple

import libcst as cst
from libcst.codemod import CodemodContext

from tsattn.injector.codemods.base import FunctionCodemod, _separator, literal

_EQUAL = dict(whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace(""))


def _after_last(last: cst.Param, new: cst.Param, between: cst.Comma) -> Tuple[cst.Param, cst.Param]:
    """(last, new) for ``new`` appended after the parameter ``last``: the new one takes the old last one's place
    (its trailing comma and the whitespace before what follows), the old last one the separator ``between``, so
    that one per line stays one per line."""
    new = new.with_changes(comma=last.comma, whitespace_after_param=last.whitespace_after_param)
    return last.with_changes(comma=between, whitespace_after_param=cst.SimpleWhitespace("")), new


class SetParameterDefault(FunctionCodemod):
    """Set the default of parameter ``param`` of ``function`` (dotted: ``"Model.__init__"``); a missing parameter
    is added as the last positional-or-keyword one (before ``*args`` / keyword-only parameters)."""

    DESCRIPTION = "Add or update a parameter default of a function."

    def __init__(self, context: CodemodContext, function: str, param: str, value: Any) -> None:
        super().__init__(context, function)
        self.param, self.value = param, value

    def edit_function(self, node: cst.FunctionDef) -> cst.FunctionDef:
        value = literal(self.value, self.quote)
        params = node.params
        equal = cst.AssignEqual(**_EQUAL)
        for field in ("params", "kwonly_params"):
            items = list(getattr(params, field))
            for i, p in enumerate(items):
                if p.name.value == self.param:
                    items[i] = p.with_changes(default=value, equal=p.equal if p.default is not None else equal)
                    return node.with_changes(params=params.with_changes(**{field: items}))
        items = list(params.params)
        new = cst.Param(name=cst.Name(self.param), default=value, equal=equal)
        if items:
            items[-1], new = _after_last(items[-1], new, _separator(items))
        items.append(new)
        return node.with_changes(params=params.with_changes(params=items))


class AddKeywordsParameter(FunctionCodemod):
    """Give ``function`` (dotted: ``"Block.__init__"``) the catch-all keyword parameter ``**name``; one that is
    there already is kept. A ``**`` parameter of another name raises ``AnchorNotFound`` (it would take the
    keywords meant for ``name``)."""

    DESCRIPTION = "Add a **kwargs parameter to a function."

    def __init__(self, context: CodemodContext, function: str, name: str) -> None:
        super().__init__(context, function)
        self.name = name

    def edit_function(self, node: cst.FunctionDef) -> cst.FunctionDef:
        params = node.params
        star = params.star_kwarg
        if star is not None:
            if star.name.value != self.name:
                raise self.missing(f"def {self.function} with **{self.name} (it has **{star.name.value})")
            return node
        new = cst.Param(name=cst.Name(self.name), star="**")
        fields = [f for f in ("params", "kwonly_params") if getattr(params, f)]
        last_field = fields[-1] if fields else None
        if params.star_arg is not cst.MaybeSentinel.DEFAULT and isinstance(params.star_arg, cst.Param) \
                and not params.kwonly_params:
            last_field = "star_arg"
        if last_field is None:
            return node.with_changes(params=params.with_changes(star_kwarg=new))
        if last_field == "star_arg":
            last, new = _after_last(params.star_arg, new, cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
            return node.with_changes(params=params.with_changes(star_arg=last, star_kwarg=new))
        items = list(getattr(params, last_field))
        items[-1], new = _after_last(items[-1], new, _separator(items))
        return node.with_changes(params=params.with_changes(**{last_field: items}, star_kwarg=new))
