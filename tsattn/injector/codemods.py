"""Generic, reusable libcst codemods: the building blocks of every recipe.

Each codemod is a ``VisitorBasedCodemodCommand`` whose constructor takes the ``CodemodContext`` and typed
arguments; a recipe names the class and the arguments (``Edit(path, AddClass, source=..., after=...)``) and the
engine runs it with ``codemod.transform_module(tree)``. Every codemod is idempotent: run on its own output it
changes nothing, and run with new values it updates the code it inserted instead of inserting it again. A
missing anchor raises ``AnchorNotFound`` naming the file (``context.filename``) and the symbol.

    AddImport(module, names)                      from MODULE import NAME, ... (merged into an existing import;
                                                  ".sibling" is a module beside the file); AddImportsVisitor
    AddClass(source, after=None)                  a top-level class or function after the one named ``after``
                                                  (at the end without); replaced in place when it exists
    AddMethod(class_name, source, after=None)     a method of ``class_name``, after method ``after``
    AddArgparseArgument(flag, after, type=None, default=..., choices=None, help=None)
                                                  ``<parser>.add_argument(flag, ...)`` next to the anchor
                                                  argument ``after``; its keywords updated when it exists
    WrapCall(scope, target, callee, template, values={})
                                                  in ``target = callee(...)`` inside ``scope``, replace the call
                                                  with ``template`` (a libcst template expression in which
                                                  ``{call}`` is the original call and ``{name}`` the literal
                                                  ``values[name]``: a wrapping call, a conditional expression,
                                                  ...); again: rebuilt around the original call
    SetKeyword(callee, keyword, value, scope=None)
                                                  add or update ``keyword=value`` in calls to ``callee``
                                                  (``keyword="**"``: the call's ``**value`` argument)
    SetParameterDefault(function, param, value)   add or update the default of a parameter of ``function``
    AddKeywordsParameter(function, name)          ``def f(..., **name)``: the catch-all keyword parameter
    ReplaceExpression(scope, old, new)            every expression ``old`` (compared as Python) in ``scope``
                                                  becomes ``new``: a constructor call, ``range(1, 4)``, ...
    ExtendTuple(name, values, after)              the module-level ``NAME = (...)`` holds ``values`` (added
                                                  when missing: recipes can each add theirs); created after
                                                  the statement ``after`` when absent
    InsertStatements(scope, after, statements)    statements after the statement ``after`` (compared as Python,
                                                  not text; or after the last of several) in ``scope``'s body
                                                  or a block nested in it (loop, if, with, try); updated in
                                                  place when the same statements with other constants follow
    RewriteImportFrom(old, new)                   change the module of ``from OLD import ...`` (``.wcmha``,
                                                  ``tsattn.modules.wcmha``) to NEW (``.PowerformerAttention``)

Values (``value``, ``default``, ``values``) are Python literals, or ``Code("source")`` for an expression written
as it is (``Code("use_pcca")``: a name, not a string). Scopes are dotted names of classes and functions
(``"Model.__init__"``; ``""`` is module level). Inserted code
follows the file: libcst renders new blocks with the module's indentation and newline, and string literals get
the quote the file uses most (``file_quote``). Untouched code keeps its exact bytes.
"""

from __future__ import annotations

import ast
import io
import tokenize
from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

import libcst as cst
import libcst.matchers as m
from libcst.codemod import Codemod, CodemodContext, VisitorBasedCodemodCommand
from libcst.codemod.visitors import AddImportsVisitor, ImportItem
from libcst.helpers import get_full_name_for_node, parse_template_expression

from tsattn.injector.errors import AnchorNotFound

__all__ = [
    "AddArgparseArgument",
    "AddClass",
    "AddImport",
    "AddKeywordsParameter",
    "AddMethod",
    "Code",
    "ExtendTuple",
    "InsertStatements",
    "NO_VALUE",
    "ReplaceExpression",
    "RewriteImportFrom",
    "SetKeyword",
    "SetParameterDefault",
    "WrapCall",
    "file_quote",
    "literal",
]


class _NoValue:
    def __repr__(self) -> str:
        return "NO_VALUE"


NO_VALUE: Any = _NoValue()  # "leave this keyword out" (``default`` of AddArgparseArgument)


@dataclass(frozen=True)
class Code:
    """A value given as Python source: ``Code("use_pcca")`` is written as the expression ``use_pcca``, not as a
    string. Its string literals take the file's quote."""

    source: str


# --- helpers --------------------------------------------------------------------------------------------------


def _quoted(text: str, quote: str) -> str:
    """``text`` as a Python string literal in ``quote`` (the other quote if ``text`` holds only this one)."""
    other = "'" if quote == '"' else '"'
    if quote in text and other not in text:
        quote, other = other, quote
    body = repr(text)[1:-1]  # Python's escapes, for the quote repr chose
    if repr(text)[0] != quote:
        body = body.replace("\\" + other, other).replace(quote, "\\" + quote)
    return quote + body + quote


def literal(value: Any, quote: str = '"') -> cst.BaseExpression:
    """A libcst expression for a Python literal (None, bool, int, float, str, list, tuple, dict) or a ``Code``."""
    if isinstance(value, Code):
        return cst.parse_expression(value.source).visit(_MatchQuotes(quote))
    if value is None or isinstance(value, bool):
        return cst.Name(repr(value))
    if isinstance(value, (int, float)):
        text = repr(value)
        if text in ("inf", "-inf", "nan"):
            return cst.parse_expression(f"float({text!r})".replace("'", quote))
        node = cst.Integer(text.lstrip("-")) if isinstance(value, int) else cst.Float(text.lstrip("-"))
        return cst.UnaryOperation(cst.Minus(), node) if text.startswith("-") else node
    if isinstance(value, str):
        return cst.SimpleString(_quoted(value, quote))
    if isinstance(value, (list, tuple)):
        elements = [cst.Element(literal(v, quote)) for v in value]
        if isinstance(value, list):
            return cst.List(elements)
        if len(elements) == 1:
            elements = [elements[0].with_changes(comma=cst.Comma())]
        return cst.Tuple(elements)
    if isinstance(value, dict):
        return cst.Dict([cst.DictElement(literal(k, quote), literal(v, quote)) for k, v in value.items()])
    raise TypeError(f"no literal for {type(value).__name__} value {value!r}")


def file_quote(source: Union[cst.Module, str, bytes]) -> str:
    """The quote character most of the one-line string literals of a module use (``"`` on a tie)."""
    if isinstance(source, cst.Module):
        source = source.bytes
    elif isinstance(source, str):
        source = source.encode("utf-8")
    counts = {"'": 0, '"': 0}
    try:
        for tok in tokenize.tokenize(io.BytesIO(source).readline):
            if tok.type == tokenize.STRING:
                body = tok.string.lstrip("rRbBuUfF")
                if body[:1] in counts and body[:3] not in ("\'\'\'", '"""'):
                    counts[body[0]] += 1
    except (tokenize.TokenError, SyntaxError):
        pass
    return "'" if counts["'"] > counts['"'] else '"'


class _MatchQuotes(cst.CSTTransformer):
    """Rewrite one-line string literals to use ``quote`` where that needs no new escapes."""

    def __init__(self, quote: str) -> None:
        super().__init__()
        self.quote = quote

    def leave_SimpleString(self, original_node: cst.SimpleString, updated_node: cst.SimpleString) -> cst.SimpleString:
        old = updated_node.quote
        if old == self.quote or len(old) != 1:
            return updated_node
        body = updated_node.raw_value
        if self.quote in body or "\\" + old in body:
            return updated_node
        return updated_node.with_changes(value=updated_node.prefix + self.quote + body + self.quote)


def _parse_snippet(source: str, quote: str) -> cst.Module:
    # Parsed with the default config: its blocks then carry no explicit indentation or newline, so that they
    # render with the target module's own. Comment lines before the first statement (libcst puts them in the
    # module's header) go with that statement.
    module = cst.parse_module(source).visit(_MatchQuotes(quote))
    if module.body and any(line.comment is not None for line in module.header):
        first = module.body[0]
        first = first.with_changes(leading_lines=[*module.header, *first.leading_lines])
        module = module.with_changes(header=[], body=[first, *module.body[1:]])
    return module


def _name(node: Optional[cst.CSTNode]) -> Optional[str]:
    return None if node is None else get_full_name_for_node(node)


def _def_name(statement: cst.CSTNode) -> Optional[str]:
    if m.matches(statement, m.ClassDef() | m.FunctionDef()):
        return statement.name.value
    return None


def _python(code: str, blank_constants: bool = False) -> str:
    """A formatting-independent form of Python statements (their AST), optionally with constants blanked."""
    tree = ast.parse(code.strip())
    if blank_constants:
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant):
                node.value = None
    return ast.dump(tree)


def _code(statement: cst.CSTNode) -> str:
    return cst.Module(body=[statement]).code


def _blank_lines(n: int) -> List[cst.EmptyLine]:
    return [cst.EmptyLine(indent=False) for _ in range(n)]


def _keyword(name: str, value: cst.BaseExpression) -> cst.Arg:
    return cst.Arg(
        value=value,
        keyword=cst.Name(name),
        equal=cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace("")),
    )


def _dotted(name: str) -> Union[cst.Name, cst.Attribute]:
    parts = name.split(".")
    node: Union[cst.Name, cst.Attribute] = cst.Name(parts[0])
    for part in parts[1:]:
        node = cst.Attribute(value=node, attr=cst.Name(part))
    return node


QUOTE_KEY = "tsattn.quote"
"""``context.scratch`` key: the file's quote character, when the caller knows it (else computed per codemod)."""


class _Codemod(VisitorBasedCodemodCommand):
    """Base: the file's name and quote, the dotted scope being visited, and a fast traversal.

    These codemods use matchers through ``m.matches``/``m.findall`` and no matcher decorators or metadata, so the
    per-node decorator bookkeeping of ``MatcherDecoratableTransformer`` and the ``MetadataWrapper`` copy of the
    tree are skipped (together about 5x the cost of the edit). They do not descend into simple statements unless
    ``descend`` says so: every edit here works on statement lists, definitions or specific statements.
    """

    on_visit = cst.CSTTransformer.on_visit
    on_leave = cst.CSTTransformer.on_leave
    on_visit_attribute = cst.CSTTransformer.on_visit_attribute
    on_leave_attribute = cst.CSTTransformer.on_leave_attribute

    def __init__(self, context: CodemodContext) -> None:
        # VisitorBasedCodemodCommand's constructor minus MatcherDecoratableTransformer's scan for decorated
        # methods (none here, and the dispatch above does not read them).
        Codemod.__init__(self, context)
        self._scope: List[str] = []
        self._module: Optional[cst.Module] = None
        self._quote: Optional[str] = None

    def transform_module(self, tree: cst.Module) -> cst.Module:
        return self.transform_module_impl(tree)

    @property
    def path(self) -> str:
        return self.context.filename or "<module>"

    @property
    def scope(self) -> str:
        return ".".join(self._scope)

    def descend(self, node: cst.SimpleStatementLine) -> bool:
        """Whether to visit inside a simple statement (one line of small statements)."""
        return False

    def visit_SimpleStatementLine(self, node: cst.SimpleStatementLine) -> bool:
        return self.descend(node)

    @property
    def quote(self) -> str:
        """The quote character of the file (from ``context.scratch[QUOTE_KEY]`` or counted once)."""
        if self._quote is None:
            self._quote = self.context.scratch.get(QUOTE_KEY) or file_quote(self._module)
        return self._quote

    def visit_Module(self, node: cst.Module) -> None:
        self._module = node

    def visit_ClassDef(self, node: cst.ClassDef) -> Optional[bool]:
        self._scope.append(node.name.value)
        return None

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.CSTNode:
        self._scope.pop()
        return updated_node

    def visit_FunctionDef(self, node: cst.FunctionDef) -> Optional[bool]:
        self._scope.append(node.name.value)
        return None

    def leave_FunctionDef(self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef) -> cst.CSTNode:
        self._scope.pop()
        return updated_node


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


# --- codemods --------------------------------------------------------------------------------------------------


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


class AddClass(_Codemod):
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

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        super().visit_ClassDef(node)
        return False  # only the module's own statements matter

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        super().visit_FunctionDef(node)
        return False

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        body = _place_definition(_block_body(updated_node), _parse_snippet(self.source, self.quote).body[0],
                                 self.name, self.after, blank_lines=2,
                                 missing=lambda: AnchorNotFound(self.path, f"top-level class or def {self.after!r}"))
        return updated_node.with_changes(body=body)


class AddMethod(_Codemod):
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
        self.found = False

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
                                 missing=lambda: AnchorNotFound(self.path, f"method {self.class_name}.{self.after}"))
        return updated_node.with_changes(body=updated_node.body.with_changes(body=body))

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if not self.found:
            raise AnchorNotFound(self.path, f"class {self.class_name}")
        return updated_node


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


class AddArgparseArgument(_Codemod):
    """``<parser>.add_argument(flag, type=..., default=..., choices=..., help=...)`` after the statement that adds
    the argument ``after`` (same parser object); an existing ``flag`` gets these keywords instead.

    ``type`` is a name (``"float"``); ``default``, ``choices`` and ``help`` are Python values (``NO_VALUE`` or
    None leaves a keyword out).
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
    ) -> None:
        super().__init__(context)
        self.flag, self.after = flag, after
        self.type, self.default, self.choices, self.help = type, default, choices, help
        self.exists = False
        self.anchored = False

    def visit_Module(self, node: cst.Module) -> None:
        super().visit_Module(node)
        finder = _StatementFinder(lambda s: self.flag in _argument_flags(s))
        node.visit(finder)
        self.exists = finder.found

    def _call(self, func: cst.BaseExpression) -> cst.Call:
        args = [cst.Arg(literal(self.flag, self.quote))]
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
                self.anchored = True
                out.append(cst.SimpleStatementLine(body=[cst.Expr(self._call(statement.body[0].value.func))]))
        return out

    def leave_IndentedBlock(self, original_node: cst.IndentedBlock, updated_node: cst.IndentedBlock) -> cst.IndentedBlock:
        return updated_node.with_changes(body=self._edit(updated_node.body))

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        updated_node = updated_node.with_changes(body=self._edit(updated_node.body))
        if not self.exists and not self.anchored:
            raise AnchorNotFound(self.path, f"add_argument({self.after!r})")
        return updated_node


_PLACEHOLDER = "_tsattn_wrapped_call_"


class WrapCall(_Codemod):
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
        super().__init__(context)
        self.target_scope, self.target, self.callee, self.template = scope, target, callee, template
        self.values = dict(values or {})
        probe = self._build(cst.Name(_PLACEHOLDER), '"')
        code = cst.Module(body=[]).code_for_node(probe)
        if code.count(_PLACEHOLDER) != 1:
            raise ValueError("WrapCall: template must use {call} exactly once")
        self.shape = _python(code, blank_constants=True)
        self.found = False

    def _build(self, call: cst.BaseExpression, quote: str) -> cst.BaseExpression:
        values = {k: literal(v, quote) for k, v in self.values.items()}
        tree = parse_template_expression(self.template, call=cst.Name(_PLACEHOLDER), **values)
        tree = tree.visit(_MatchQuotes(quote))
        return tree.deep_replace(m.findall(tree, m.Name(_PLACEHOLDER))[0], call)

    def descend(self, node: cst.SimpleStatementLine) -> bool:
        return self.scope == self.target_scope

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
        if self.scope != self.target_scope or len(updated_node.targets) != 1:
            return updated_node
        if _name(updated_node.targets[0].target) != self.target:
            return updated_node
        value = updated_node.value
        inner = value if self._is_call_to(value, self.callee) else self._wrapped_call(value)
        if inner is None:
            return updated_node
        self.found = True
        return updated_node.with_changes(value=self._build(inner, self.quote))

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if not self.found:
            where = self.target_scope or "module level"
            raise AnchorNotFound(self.path, f"{self.target} = {self.callee}(...) in {where}")
        return updated_node


class SetKeyword(_Codemod):
    """Add or update ``keyword=value`` in every call to ``callee`` (within ``scope`` when given).

    ``keyword="**"`` is the call's ``**value`` argument (added last, or its value updated).
    """

    DESCRIPTION = "Add or update a keyword argument of calls."

    def __init__(self, context: CodemodContext, callee: str, keyword: str, value: Any,
                 scope: Optional[str] = None) -> None:
        super().__init__(context)
        self.callee, self.keyword, self.value, self.target_scope = callee, keyword, value, scope
        self.found = False

    def descend(self, node: cst.SimpleStatementLine) -> bool:
        return self.target_scope is None or self.scope == self.target_scope

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.Call:
        if _name(updated_node.func) != self.callee:
            return updated_node
        if self.target_scope is not None and self.scope != self.target_scope:
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
                between = args[-2].comma if len(args) > 1 and isinstance(args[-2].comma, cst.Comma) else None
                between = between.deep_clone() if between is not None else cst.Comma(
                    whitespace_after=cst.SimpleWhitespace(" "))
                new = new.with_changes(comma=args[-1].comma)
                args[-1] = args[-1].with_changes(comma=between)
            elif args:  # the new argument takes what followed the old last one (e.g. a line break before ")")
                new = new.with_changes(whitespace_after_arg=args[-1].whitespace_after_arg)
                args[-1] = args[-1].with_changes(whitespace_after_arg=cst.SimpleWhitespace(""))
            args.append(new)
        return updated_node.with_changes(args=args)

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if not self.found:
            raise AnchorNotFound(self.path, f"call {self.callee}(...)" + (f" in {self.target_scope}" if self.target_scope else ""))
        return updated_node


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


def _expression_python(code: str, blank_constants: bool = False) -> str:
    tree = ast.parse(code.strip(), mode="eval")
    if blank_constants:
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant):
                node.value = None
    return ast.dump(tree)


class ReplaceExpression(_Codemod):
    """Replace every expression ``old`` inside ``scope`` (``""``: module level; nested blocks, comprehensions and
    lambdas included, nested defs and classes not) by the expression ``new``.

    Expressions are compared as Python (their AST): formatting, comments, parentheses and a trailing comma do not
    matter. ``new`` is written as given (its quotes follow the file); continuation lines are relative to the
    statement's indentation. Idempotent: where no ``old`` is left, an expression that is ``new`` with other
    constants is updated to ``new``, and ``new`` itself is left alone; neither present raises ``AnchorNotFound``.
    """

    DESCRIPTION = "Replace an expression (compared as Python) by another."

    def __init__(self, context: CodemodContext, scope: str, old: str, new: str) -> None:
        super().__init__(context)
        self.target_scope, self.old, self.new = scope, old, new
        self.old_python = _expression_python(old)
        self.new_python = _expression_python(new)
        self.new_shape = _expression_python(new, blank_constants=True)
        self.old_type = type(cst.parse_expression(old.strip()))
        self.new_type = type(cst.parse_expression(new.strip()))
        self.found = False

    def descend(self, node: cst.SimpleStatementLine) -> bool:
        return self.scope == self.target_scope

    def on_leave(self, original_node: cst.CSTNode, updated_node: cst.CSTNode):
        result = super().on_leave(original_node, updated_node)
        if self.scope != self.target_scope or not isinstance(result, (self.old_type, self.new_type)):
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

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if not self.found:
            where = self.target_scope or "module level"
            raise AnchorNotFound(self.path, f"expression `{self.old.strip()}` in {where}")
        return updated_node


class ExtendTuple(_Codemod):
    """The module-level assignment ``name = (...)``, a tuple of literals, holds every one of ``values``: the
    missing ones are appended, in order, the others kept where they are (so several recipes can each add their
    own to one registry). Without the assignment, ``name = (values...)`` is inserted after the module-level
    statement ``after`` (compared as Python), with ``comment`` as a comment line above it when given."""

    DESCRIPTION = "Add values to a module-level tuple, or create it."

    def __init__(self, context: CodemodContext, name: str, values: Sequence[Any], after: str,
                 comment: Optional[str] = None) -> None:
        super().__init__(context)
        self.name, self.values, self.comment = name, tuple(values), comment
        self.after, self.after_python = after, _python(after)

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        super().visit_ClassDef(node)
        return False  # only the module's own statements matter

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        super().visit_FunctionDef(node)
        return False

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
                raise AnchorNotFound(self.path, f"{self.name} = (...) holding only literals") from None
            if not isinstance(current, tuple):
                raise AnchorNotFound(self.path, f"{self.name} = (...) as a tuple (it is a {type(current).__name__})")
            missing = [v for v in self.values if v not in current]
            if missing:
                value = literal(current + tuple(missing), self.quote)
                body[i] = statement.with_changes(body=[assign.with_changes(value=value)])
            return updated_node.with_changes(body=body)
        for i, statement in enumerate(body):
            if _python(_code(statement)) == self.after_python:
                new = cst.SimpleStatementLine(body=[cst.Assign(
                    targets=[cst.AssignTarget(cst.Name(self.name))], value=literal(self.values, self.quote))])
                if self.comment:
                    new = new.with_changes(leading_lines=[
                        cst.EmptyLine(), cst.EmptyLine(comment=cst.Comment("# " + self.comment))])
                body.insert(i + 1, new)
                return updated_node.with_changes(body=body)
        raise AnchorNotFound(self.path, f"module-level statement `{self.after.strip()}`")


class InsertStatements(_Codemod):
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
        super().__init__(context)
        anchors = [after] if isinstance(after, str) else list(after)
        if not anchors:
            raise ValueError("InsertStatements: after must name at least one statement")
        self.target_scope, self.statements = scope, statements
        self.after_source = " or ".join(f"`{a.strip()}`" for a in anchors)
        self.anchors = {_python(a) for a in anchors}
        # anchors that are simple statements are only compared with simple statements (cheaper)
        self.simple = all(isinstance(cst.parse_module(a.strip()).body[0], cst.SimpleStatementLine) for a in anchors)
        snippet = cst.parse_module(statements).body
        self.count = len(snippet)
        self.shape = [_python(_code(s), True) for s in snippet]
        self.found = False

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
        if self.scope != self.target_scope:
            return updated_node
        return updated_node.with_changes(body=self._edit(updated_node.body))

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if self.target_scope == "":
            updated_node = updated_node.with_changes(body=self._edit(updated_node.body))
        if not self.found:
            where = self.target_scope or "module level"
            raise AnchorNotFound(self.path, f"statement {self.after_source} in {where}")
        return updated_node


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
