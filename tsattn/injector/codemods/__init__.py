"""Generic, reusable libcst codemods: the building blocks of every recipe.

The package, by kind of edit (every public name is re-exported here: ``from tsattn.injector.codemods import X``):

    base.py                 values (``Code``, ``NO_VALUE``, ``literal``), the file's quote (``file_quote``), the
                            base class of every codemod
    imports.py              AddImport, RewriteImportFrom
    definitions.py          AddClass, AddMethod
    parameters.py           SetParameterDefault, AddKeywordsParameter
    calls.py                WrapCall, SetKeyword
    argparse_arguments.py   AddArgparseArgument
    statements.py           InsertStatements, ReplaceExpression, ExtendTuple

Each codemod is a ``VisitorBasedCodemodCommand`` whose constructor takes the ``CodemodContext`` and typed
arguments; a recipe names the class and the arguments (``Edit(path, AddClass, source=..., after=...)``) and the
engine runs it with ``codemod.transform_module(tree)``. Every codemod is idempotent: run on its own output it
changes nothing, and run with new values it updates the code it inserted instead of inserting it again. A
missing anchor raises ``AnchorNotFound`` naming the file (``context.filename``) and the symbol: that logic is
``AnchoredCodemod``'s (base.py), which every codemod with an anchor subclasses (it names the anchor in
``anchor()`` and sets ``found``); ``ModuleLevelCodemod`` edits the module's own statements,
``ScopedCodemod`` adds a dotted scope to edit in, ``FunctionCodemod`` the
definition of one function.

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

One pass per file, as libcst composes codemods: the engine runs a file's codemods in order on one
``CodemodContext`` (``FilePass``). ``AddImport`` only queues its import in that context
(``AddImportsVisitor.add_needed_import``; a recipe's own codemod may do the same); the queued imports are applied
once, when the pass ends (``apply_queued_imports``: libcst's ``AddImportsVisitor`` on the leading import block),
so that two codemods asking for one import give one import line. A codemod run on its own applies the imports it
queued when it ends.
"""


from __future__ import annotations

from tsattn.injector.codemods.argparse_arguments import AddArgparseArgument
from tsattn.injector.codemods.base import (NO_VALUE, QUOTE_KEY, AnchoredCodemod, Code, FilePass, FunctionCodemod,
                                          ModuleLevelCodemod, ScopedCodemod, apply_queued_imports, file_quote, literal)
from tsattn.injector.codemods.calls import SetKeyword, WrapCall
from tsattn.injector.codemods.definitions import AddClass, AddMethod
from tsattn.injector.codemods.imports import AddImport, RewriteImportFrom
from tsattn.injector.codemods.parameters import AddKeywordsParameter, SetParameterDefault
from tsattn.injector.codemods.statements import ExtendTuple, InsertStatements, ReplaceExpression

__all__ = [
    "AddArgparseArgument",
    "AddClass",
    "AddImport",
    "AddKeywordsParameter",
    "AddMethod",
    "AnchoredCodemod",
    "Code",
    "ExtendTuple",
    "FilePass",
    "FunctionCodemod",
    "InsertStatements",
    "ModuleLevelCodemod",
    "NO_VALUE",
    "QUOTE_KEY",
    "ReplaceExpression",
    "RewriteImportFrom",
    "ScopedCodemod",
    "SetKeyword",
    "SetParameterDefault",
    "WrapCall",
    "apply_queued_imports",
    "file_quote",
    "literal",
]
