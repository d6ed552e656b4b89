"""Template installation: the files a recipe adds to a target, rendered in memory.

A template is a real Python file of tsattn, copied into the target:

- generic templates are the files of ``tsattn/modules/`` (``MODULES / "wcmha.py"``): torch and the standard
  library only, and a sibling template imported relatively (``from .wcmha import DecayBias``);
- recipe templates live in the recipe's own package (``recipes/calf_templates/PowerformerGPT2.py``) and may use
  what the target already requires (CALF: torch, transformers); they import generic templates by their tsattn
  name (``from tsattn.modules.wcmha import DecayBias``), so that they can be imported and tested in tsattn.

Installing a template installs every template it imports (transitively) into the same directory of the target,
under the name the recipe gives it (``Template(MODULES / "wcmha.py", "models/PowerformerAttention.py")``) or
else under its own file name; each such import is rewritten, with the ``RewriteImportFrom`` codemod, to a
relative import of the installed module (``from .PowerformerAttention import DecayBias``). A template that
imports no sibling is copied byte for byte.

Code that a recipe inserts into a target's own files with a codemod (a method, statements, an expression) lives
in real template files as well (``recipes/wave_transformer_templates/wave_transformer_code.py``), which are
imported and tested in tsattn but not installed; the recipe reads a piece of one as text with
``template_code(source, name, part)``.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Dict, List, Sequence, Tuple

import libcst as cst
from libcst.codemod import CodemodContext

from tsattn.injector.codemods import RewriteImportFrom

MODULES = Path(__file__).resolve().parent.parent / "modules"
"""tsattn/modules/: the generic templates."""

_TSATTN_MODULES = "tsattn.modules."


@dataclass(frozen=True)
class Template:
    """``source``: the template file (absolute path); ``dest``: its path in the target (POSIX, relative)."""

    source: Path
    dest: str


def _sibling_imports(data: bytes, source: Path) -> List[Tuple[str, Path]]:
    """(module as written, template file) for each import of another template (read with the stdlib parser)."""
    found = []
    for node in ast.walk(ast.parse(data)):
        if isinstance(node, ast.Import):
            if any(alias.name.split(".")[0] == "tsattn" for alias in node.names):
                raise ValueError(f"template {source}: `import tsattn...`: import a template as `from tsattn.modules.X import ...`")
        if not isinstance(node, ast.ImportFrom):
            continue
        module = node.module or ""
        name = "." * node.level + module
        if node.level:
            if node.level != 1 or not module or "." in module:
                raise ValueError(f"template {source}: `from {name} import ...`: only `from .sibling import ...` is allowed")
            found.append((name, source.parent / f"{module}.py"))
        elif name.startswith(_TSATTN_MODULES) and "." not in name[len(_TSATTN_MODULES):]:
            found.append((name, MODULES / f"{name[len(_TSATTN_MODULES):]}.py"))
        elif name.split(".")[0] == "tsattn":
            raise ValueError(f"template {source}: `from {name} import ...`: a template may import only tsattn.modules.X")
    for name, path in found:
        if not path.is_file():
            raise ValueError(f"template {source}: `from {name} import ...`: no template {path}")
    return found


def render_templates(templates: Sequence[Template]) -> Dict[str, bytes]:
    """The files to add, ``{dest: bytes}``: the templates and the templates they import, imports rewritten.

    Raises ``ValueError`` for two templates with one destination, a sibling installed into another directory,
    or an import a template may not have.
    """
    dest_of: Dict[Path, str] = {}
    for t in templates:
        source = t.source.resolve()
        if t.dest in dest_of.values():
            raise ValueError(f"two templates are installed as {t.dest}")
        dest_of[source] = t.dest
    queue = list(dest_of)
    parsed: Dict[Path, Tuple[bytes, List[Tuple[str, Path]]]] = {}
    while queue:
        source = queue.pop(0)
        data = source.read_bytes()
        deps = [(name, dep.resolve()) for name, dep in _sibling_imports(data, source)]
        folder = PurePosixPath(dest_of[source]).parent
        for name, dep in deps:
            if dep not in dest_of:
                dest = str(folder / dep.name)
                if dest in dest_of.values():
                    raise ValueError(f"{dep.name} (imported by {source.name}) would overwrite another template at {dest}")
                dest_of[dep] = dest
                queue.append(dep)
            elif PurePosixPath(dest_of[dep]).parent != folder:
                raise ValueError(f"{source.name} imports {dep.name}, installed at {dest_of[dep]}: not beside {dest_of[source]}")
        parsed[source] = (data, deps)

    out: Dict[str, bytes] = {}
    for source, (data, deps) in parsed.items():
        renames = [(name, "." + PurePosixPath(dest_of[dep]).stem) for name, dep in deps]
        renames = [(old, new) for old, new in renames if old != new]
        if renames:  # only then is the template parsed by libcst; otherwise it is copied byte for byte
            tree = cst.parse_module(data)
            for old, new in renames:
                tree = RewriteImportFrom(CodemodContext(filename=dest_of[source]), old=old, new=new).transform_module(tree)
            data = tree.bytes
        out[dest_of[source]] = data
    return out


@functools.lru_cache(maxsize=None)
def _module_body(source: Path) -> Tuple[ast.stmt, ...]:
    return tuple(ast.parse(source.read_bytes()).body)


def template_constant(source: Path, name: str):
    """The literal value of the module-level constant ``name`` of a template, read without importing it (so
    that ``tsattn-inject`` does not import torch). Each template is parsed once per process."""
    for node in _module_body(source):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise ValueError(f"{source}: no constant {name}")


@functools.lru_cache(maxsize=None)
def _cst_module(source: Path) -> cst.Module:
    return cst.parse_module(source.read_bytes())


def template_code(source: Path, name: str, part: str = "body") -> str:
    """Python source of a piece of the template file ``source`` that a recipe inserts with a codemod, read as text
    (the template is not imported; each is parsed once per process). ``name`` is the dotted name of a class or
    function in it (``"WaveTransformer.harmonic_selection"``); ``part``:

        "definition"  the class or def itself, without the comments and blank lines above it (for ``AddClass``,
                      ``AddMethod``)
        "body"        the statements of its body, the comments above them included (for ``InsertStatements``)
        "return"      the expression its one statement, a ``return``, returns (for ``WrapCall``'s template)

    The code is at column 0, its continuation lines relative to its statements, as the codemods expect.
    Raises ``ValueError`` naming the file for a missing name or a ``return`` part that is not one.
    """
    node: cst.CSTNode = _cst_module(source)
    for part_name in name.split("."):
        body = node.body if isinstance(node, cst.Module) else node.body.body
        found = [s for s in body if isinstance(s, (cst.ClassDef, cst.FunctionDef)) and s.name.value == part_name]
        if not found:
            raise ValueError(f"template {source}: no class or def {name}")
        node = found[0]
    if part == "definition":
        return cst.Module(body=[node.with_changes(leading_lines=[])]).code
    if part == "body":
        return cst.Module(body=list(node.body.body)).code
    if part == "return":
        statements = node.body.body
        if len(statements) != 1 or not isinstance(statements[0], cst.SimpleStatementLine) \
                or not isinstance(statements[0].body[0], cst.Return) or statements[0].body[0].value is None:
            raise ValueError(f"template {source}: {name} is not one `return <expression>`")
        return cst.Module(body=[]).code_for_node(statements[0].body[0].value)
    raise ValueError(f"template_code: part must be definition, body or return; got {part!r}")
