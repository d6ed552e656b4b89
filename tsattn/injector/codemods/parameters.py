"""Function parameters: ``SetParameterDefault`` and ``AddKeywordsParameter``."""

from __future__ import annotations

from typing import Any

import libcst as cst
from libcst.codemod import CodemodContext

from tsattn.injector.errors import AnchorNotFound
from tsattn.injector.codemods.base import _Codemod, literal


class SetParameterDefault(_Codemod):
    """Set the default of parameter ``param`` of ``function`` (dotted: ``"Model.__init__"``); a missing parameter
    is added as the last positional-or-keyword one (before ``*args`` / keyword-only parameters)."""

    DESCRIPTION = "Add or update a parameter default of a function."

    def __init__(self, context: CodemodContext, function: str, param: str, value: Any) -> None:
        super().__init__(context)
        self.function, self.param, self.value = function, param, value
        self.found = False

    def leave_FunctionDef(self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef) -> cst.FunctionDef:
        here = self.scope
        super().leave_FunctionDef(original_node, updated_node)
        if here != self.function:
            return updated_node
        self.found = True
        value = literal(self.value, self.quote)
        params = updated_node.params
        equal = cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace(""))
        for field in ("params", "kwonly_params"):
            items = list(getattr(params, field))
            for i, p in enumerate(items):
                if p.name.value == self.param:
                    items[i] = p.with_changes(default=value, equal=p.equal if p.default is not None else equal)
                    return updated_node.with_changes(params=params.with_changes(**{field: items}))
        items = list(params.params)
        new = cst.Param(name=cst.Name(self.param), default=value, equal=equal)
        if items:
            # The new parameter takes the old last one's place (its trailing comma and the whitespace before what
            # follows), and the old last one the separator the list uses: one per line stays one per line.
            last = items[-1]
            between = items[-2].comma if len(items) > 1 and isinstance(items[-2].comma, cst.Comma) else None
            between = between.deep_clone() if between is not None else cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
            new = new.with_changes(comma=last.comma, whitespace_after_param=last.whitespace_after_param)
            items[-1] = last.with_changes(comma=between, whitespace_after_param=cst.SimpleWhitespace(""))
        items.append(new)
        return updated_node.with_changes(params=params.with_changes(params=items))

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if not self.found:
            raise AnchorNotFound(self.path, f"def {self.function}")
        return updated_node


class AddKeywordsParameter(_Codemod):
    """Give ``function`` (dotted: ``"Block.__init__"``) the catch-all keyword parameter ``**name``; one that is
    there already is kept. A ``**`` parameter of another name raises ``AnchorNotFound`` (it would take the
    keywords meant for ``name``)."""

    DESCRIPTION = "Add a **kwargs parameter to a function."

    def __init__(self, context: CodemodContext, function: str, name: str) -> None:
        super().__init__(context)
        self.function, self.name = function, name
        self.found = False

    def leave_FunctionDef(self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef) -> cst.FunctionDef:
        here = self.scope
        super().leave_FunctionDef(original_node, updated_node)
        if here != self.function:
            return updated_node
        params = updated_node.params
        star = params.star_kwarg
        if star is not None:
            if star.name.value != self.name:
                raise AnchorNotFound(self.path, f"def {self.function} with **{self.name} (it has **{star.name.value})")
            self.found = True
            return updated_node
        self.found = True
        new = cst.Param(name=cst.Name(self.name), star="**")
        fields = [f for f in ("params", "kwonly_params") if getattr(params, f)]
        last_field = fields[-1] if fields else None
        if params.star_arg is not cst.MaybeSentinel.DEFAULT and isinstance(params.star_arg, cst.Param) \
                and not params.kwonly_params:
            last_field = "star_arg"
        if last_field is None:
            return updated_node.with_changes(params=params.with_changes(star_kwarg=new))
        # as in SetParameterDefault: the new parameter takes the old last one's trailing comma and whitespace
        if last_field == "star_arg":
            last = params.star_arg
            between = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
        else:
            items = list(getattr(params, last_field))
            last = items[-1]
            between = items[-2].comma if len(items) > 1 and isinstance(items[-2].comma, cst.Comma) else None
            between = between.deep_clone() if between is not None else cst.Comma(
                whitespace_after=cst.SimpleWhitespace(" "))
        new = new.with_changes(comma=last.comma, whitespace_after_param=last.whitespace_after_param)
        last = last.with_changes(comma=between, whitespace_after_param=cst.SimpleWhitespace(""))
        if last_field == "star_arg":
            params = params.with_changes(star_arg=last, star_kwarg=new)
        else:
            items[-1] = last
            params = params.with_changes(**{last_field: items}, star_kwarg=new)
        return updated_node.with_changes(params=params)

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if not self.found:
            raise AnchorNotFound(self.path, f"def {self.function}")
        return updated_node
