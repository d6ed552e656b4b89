"""The shared layer of the codemods: values (``Code``, ``literal``), the file's quote, snippets, and the
base class ``_Codemod``."""

from __future__ import annotations

import ast
import io
import tokenize
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Type, Union

import libcst as cst
import libcst.matchers as m
from libcst.codemod import Codemod, CodemodContext, VisitorBasedCodemodCommand
from libcst.codemod.visitors import AddImportsVisitor, ImportItem
from libcst.helpers import get_absolute_module_from_package_for_import, get_full_name_for_node

from tsattn.injector.errors import AnchorNotFound


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


def _python(code: str, blank_constants: bool = False, mode: str = "exec") -> str:
    """A formatting-independent form of Python statements (``mode="eval"``: an expression), their AST, optionally
    with constants blanked."""
    tree = ast.parse(code.strip(), mode=mode)
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
        """Run on its own (not in a ``FilePass``): the edit, then the imports it queued."""
        return apply_queued_imports(self.context, self.transform_module_impl(tree))

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



class AnchoredCodemod(_Codemod):
    """A codemod that must find its anchor, the symbol it edits or inserts next to, in the file.

    A subclass names its anchor with ``anchor()`` (a phrase for the message: ``"def Model.__init__"``,
    ``"call f(...) in Model.__init__"``) and sets ``self.found = True`` where it finds it; ``found`` is reset at
    the start of every module. When the module is done and the anchor was not found, ``AnchorNotFound`` naming
    the file (``context.filename``) and the anchor is raised. ``missing(symbol)`` is that error for a more
    specific anchor (a method ``after`` that the class lacks, a parameter of the wrong name), to raise at once.
    """

    found = False

    def anchor(self) -> str:
        raise NotImplementedError(f"{type(self).__name__} names no anchor")

    def missing(self, symbol: Optional[str] = None) -> AnchorNotFound:
        return AnchorNotFound(self.path, self.anchor() if symbol is None else symbol)

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        self.found = False
        tree = super().transform_module_impl(tree)
        if not self.found:
            raise self.missing()
        return tree


class ModuleLevelCodemod(AnchoredCodemod):
    """An ``AnchoredCodemod`` that edits the module's own statements only (it visits no class or def body)."""

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        super().visit_ClassDef(node)
        return False

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        super().visit_FunctionDef(node)
        return False


class ScopedCodemod(AnchoredCodemod):
    """An ``AnchoredCodemod`` that edits inside one dotted scope, ``target_scope`` (``"Model.__init__"``; ``""``:
    module level; None: anywhere), descending into the simple statements there; ``where`` names it for
    ``anchor()``."""

    def __init__(self, context: CodemodContext, scope: Optional[str]) -> None:
        super().__init__(context)
        self.target_scope = scope

    @property
    def in_scope(self) -> bool:
        return self.target_scope is None or self.scope == self.target_scope

    @property
    def where(self) -> str:
        return "anywhere" if self.target_scope is None else self.target_scope or "module level"

    def descend(self, node: cst.SimpleStatementLine) -> bool:
        return self.in_scope


class FunctionCodemod(AnchoredCodemod):
    """An ``AnchoredCodemod`` that edits the definition of one function, ``function`` (dotted:
    ``"Block.__init__"``), in ``edit_function``; its anchor is ``def <function>``."""

    def __init__(self, context: CodemodContext, function: str) -> None:
        super().__init__(context)
        self.function = function

    def anchor(self) -> str:
        return f"def {self.function}"

    def edit_function(self, node: cst.FunctionDef) -> cst.FunctionDef:
        raise NotImplementedError

    def leave_FunctionDef(self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef) -> cst.FunctionDef:
        here = self.scope
        super().leave_FunctionDef(original_node, updated_node)
        if here != self.function:
            return updated_node
        self.found = True
        return self.edit_function(updated_node)


def _separator(items: Sequence[Union[cst.Param, cst.Arg]]) -> cst.Comma:
    """The comma a parameter or argument list uses between its items (a copy of the one before its last item;
    ``", "`` when it has none)."""
    between = items[-2].comma if len(items) > 1 and isinstance(items[-2].comma, cst.Comma) else None
    return between.deep_clone() if between is not None else cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))



# --- one pass per file: imports queued in the context, applied once at its end -------------------------------------

_IMPORT = m.SimpleStatementLine(body=[m.OneOf(m.Import(), m.ImportFrom())])
_DOCSTRING = m.SimpleStatementLine(body=[m.Expr(m.SimpleString())])
_IMPORT_OR_DOCSTRING = m.SimpleStatementLine(body=[m.OneOf(m.Import(), m.ImportFrom(), m.Expr(m.SimpleString()))])


def _import_block(body: Sequence[cst.CSTNode]) -> Tuple[int, int]:
    """``(start, end)``: the module's block of imports that AddImportsVisitor edits. The leading block of
    docstring and import statements when the module starts with one; otherwise (a module that starts with
    other statements, as PatchTST's ``__all__ = [...]``) its first run of top-level imports, so that an added
    import joins the others instead of going above everything; ``(0, 0)`` in a module without imports."""
    n = 0
    while n < len(body) and m.matches(body[n], _IMPORT_OR_DOCSTRING):
        n += 1
    if n == 0 or all(m.matches(s, _DOCSTRING) for s in body[:n]):
        start = next((i for i in range(n, len(body)) if m.matches(body[i], _IMPORT)), None)
        if start is None:
            return 0, n
        end = start
        while end < len(body) and m.matches(body[end], _IMPORT):
            end += 1
        return start, end
    return 0, n


def _queued_imports(context: CodemodContext) -> List[ImportItem]:
    return list(context.scratch.get(AddImportsVisitor.CONTEXT_KEY, ()))


def apply_queued_imports(context: CodemodContext, tree: cst.Module) -> cst.Module:
    """``tree`` with the imports queued in ``context`` (``AddImportsVisitor.add_needed_import``) added by libcst's
    ``AddImportsVisitor``, each once (merged into an existing import of its module, else a new statement at the
    end of the block), on the module's leading block of docstring and imports only; the queue is emptied."""
    if not _queued_imports(context):
        return tree
    start, end = _import_block(tree.body)
    block = AddImportsVisitor(context).transform_module(tree.with_changes(body=tree.body[start:end]))
    context.scratch.pop(AddImportsVisitor.CONTEXT_KEY, None)
    return tree.with_changes(body=[*tree.body[:start], *block.body, *tree.body[end:]])


def pending_import_position(context: CodemodContext, body: Sequence[cst.CSTNode], statement: str) -> Optional[int]:
    """Where the statement ``statement`` will stand in ``body`` (a module's) once the queued imports are applied,
    when it is a ``from M import a, b`` that they add as a new statement (the imports queued for ``M`` are these
    names, and ``M`` is not imported in the leading block yet): the end of the leading block. None otherwise.

    So a codemod can anchor on an import that an earlier codemod of the same pass queued (``ExtendTuple(after=
    "from .x import A")`` after ``AddImport(".x", ["A"])``), as it could when imports were added at once."""
    try:
        parsed = ast.parse(statement.strip()).body
    except SyntaxError:
        return None
    if len(parsed) != 1 or not isinstance(parsed[0], ast.ImportFrom) or any(a.asname for a in parsed[0].names):
        return None
    package = context.full_package_name
    module = ImportItem(parsed[0].module or "", None, None, parsed[0].level).resolve_relative(package).module
    queued = [i.resolve_relative(package) for i in _queued_imports(context)]
    names = sorted({i.obj_name for i in queued if i.module == module and i.obj_name and i.alias is None})
    if not names or names != [a.name for a in parsed[0].names]:
        return None
    start, n = _import_block(body)
    for existing in body[start:n]:
        for node in existing.body:
            if isinstance(node, cst.ImportFrom) and get_absolute_module_from_package_for_import(package, node) == module:
                return None
    return n


class FilePass(Codemod):
    """The codemods of one file, run in order on one ``CodemodContext``, the way libcst composes transforms
    (``MagicArgsCodemodCommand``): each runs on the tree the one before returned, the imports they queue are
    applied once, when the last is done (``apply_queued_imports``).

    ``codemods``: ``(codemod class, keyword arguments)`` pairs, each instantiated with the shared context.
    """

    def __init__(self, context: CodemodContext, codemods: Sequence[Tuple[Type[Codemod], Mapping[str, Any]]]) -> None:
        super().__init__(context)
        self.codemods = list(codemods)

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        for codemod, args in self.codemods:
            transform = codemod(self.context, **args)
            if isinstance(transform, _Codemod):
                tree = transform.transform_module_impl(tree)
            else:  # another libcst codemod: its metadata handled, its queued imports left to the end of the pass
                tree = Codemod.transform_module(transform, tree)
        return tree

    def transform_module(self, tree: cst.Module) -> cst.Module:
        return apply_queued_imports(self.context, self.transform_module_impl(tree))


def _expression_python(code: str, blank_constants: bool = False) -> str:
    return _python(code, blank_constants, mode="eval")
