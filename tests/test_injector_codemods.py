"""The generic codemods and template installation, on before/after snippets."""

from __future__ import annotations

import textwrap

import libcst as cst
import pytest
from libcst.codemod import CodemodContext

from tsattn.injector.codemods import (
    AddArgparseArgument,
    AddClass,
    AddImport,
    AddKeywordsParameter,
    AddMethod,
    Code,
    ExtendTuple,
    InsertStatements,
    ReplaceExpression,
    RewriteImportFrom,
    SetKeyword,
    SetParameterDefault,
    WrapCall,
    file_quote,
    literal,
)
from tsattn.injector.codemods import AnchoredCodemod, FilePass
from tsattn.injector.errors import AnchorNotFound
from tsattn.injector.templates import MODULES, Template, render_templates, template_constant


def run(code: str, codemod, /, **args) -> str:
    context = CodemodContext(filename="pkg/mod.py", full_module_name="pkg.mod", full_package_name="pkg")
    return codemod(context, **args).transform_module(cst.parse_module(code)).code


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def check(before: str, after: str, codemod, /, **args) -> None:
    """before -> after, and after -> after (idempotent)."""
    before, after = dedent(before), dedent(after)
    assert run(before, codemod, **args) == after
    assert run(after, codemod, **args) == after


# --- AddImport -------------------------------------------------------------------------------------------------


def test_add_import_merges_into_existing_from_import():
    check(
        """
        import torch
        from peft import LoraConfig, TaskType

        x = 1
        """,
        """
        import torch
        from peft import get_peft_model, LoraConfig, TaskType

        x = 1
        """,
        AddImport, module="peft", names=["get_peft_model"],
    )


def test_add_import_new_module_goes_after_the_import_block():
    check(
        '''
        """doc"""
        import torch

        class A:
            pass
        ''',
        '''
        """doc"""
        import torch
        from pkg.sibling import Thing

        class A:
            pass
        ''',
        AddImport, module=".sibling", names=["Thing"],
    )


def test_add_import_later_import_elsewhere_is_not_the_block():
    source = dedent("""
        import os
        def f():
            from peft import x
            return x
        """)
    out = run(source, AddImport, module="peft", names=["x"])
    assert out.startswith("import os\nfrom peft import x\n")  # the function's local import does not count
    assert run(out, AddImport, module="peft", names=["x"]) == out


# --- AddClass / AddMethod -------------------------------------------------------------------------------------


NEW_CLASS = '''
class B(A):
    """New."""

    def f(self, x):
        return "x"
'''


def test_add_class_after_anchor_follows_indentation_quotes_and_newlines():
    before = "import a\r\n\r\nclass A:\r\n\tdef f(self):\r\n\t\treturn 'a'\r\n\r\nclass C:\r\n\tpass\r\n"
    out = run(before, AddClass, source=NEW_CLASS, after="A")
    assert out == (
        "import a\r\n\r\nclass A:\r\n\tdef f(self):\r\n\t\treturn 'a'\r\n\r\n\r\n"
        'class B(A):\r\n\t"""New."""\r\n\r\n\tdef f(self, x):\r\n\t\treturn \'x\'\r\n\r\nclass C:\r\n\tpass\r\n'
    )
    assert run(out, AddClass, source=NEW_CLASS, after="A") == out


def test_add_class_replaces_an_existing_definition_in_place():
    before = dedent("""
        class A:
            pass


        class B(A):
            old = 1

        x = 2
        """)
    out = run(before, AddClass, source=NEW_CLASS, after="A")
    assert "old = 1" not in out and out.count("class B") == 1 and out.endswith("return \"x\"\n\nx = 2\n")


def test_add_class_missing_anchor_names_file_and_symbol():
    with pytest.raises(AnchorNotFound) as err:
        run("class A:\n    pass\n", AddClass, source=NEW_CLASS, after="Missing")
    assert err.value.path == "pkg/mod.py" and "Missing" in err.value.symbol


def test_add_method():
    check(
        """
        class A:
          def f(self):
            return 1

          def h(self):
            return 3
        """,
        """
        class A:
          def f(self):
            return 1

          def g(self, y="q"):
            return y

          def h(self):
            return 3
        """,
        AddMethod, class_name="A", source="def g(self, y='q'):\n    return y\n", after="f",
    )
    with pytest.raises(AnchorNotFound, match="class Nope"):
        run("class A:\n    pass\n", AddMethod, class_name="Nope", source="def g(self):\n    pass\n")


# --- AddArgparseArgument ----------------------------------------------------------------------------------------


RUN_PY = """
import argparse

if __name__ == '__main__':
    parser = argparse.ArgumentParser()
    # gpt
    parser.add_argument('--gpt_layers', type=int, default=6,
                        help='number of layers')  # keep me
    parser.add_argument('--other', type=int)
"""


def test_add_argparse_argument_next_to_anchor_then_update_default():
    out = run(dedent(RUN_PY), AddArgparseArgument, flag="--alpha", after="--gpt_layers", type="float", default=1.0,
              choices=None, help="decay scale")
    assert out == dedent("""
        import argparse

        if __name__ == '__main__':
            parser = argparse.ArgumentParser()
            # gpt
            parser.add_argument('--gpt_layers', type=int, default=6,
                                help='number of layers')  # keep me
            parser.add_argument('--alpha', type=float, default=1.0, help='decay scale')
            parser.add_argument('--other', type=int)
        """)
    again = run(out, AddArgparseArgument, flag="--alpha", after="--gpt_layers", type="float", default=2.0,
                help="decay scale")
    assert again == out.replace("default=1.0", "default=2.0")
    with_choices = run(again, AddArgparseArgument, flag="--decay", after="--alpha", type="str", default="powerlaw",
                       choices=("powerlaw", "none"))
    assert "    parser.add_argument('--decay', type=str, default='powerlaw', choices=['powerlaw', 'none'])\n" in with_choices


def test_add_argparse_argument_existing_flag_elsewhere_is_updated_not_duplicated():
    source = dedent(RUN_PY) + "    parser.add_argument('--alpha', type=float, default=3.0)\n"
    out = run(source, AddArgparseArgument, flag="--alpha", after="--gpt_layers", type="float", default=1.0)
    assert out.count("'--alpha'") == 1 and out.endswith("parser.add_argument('--alpha', type=float, default=1.0)\n")


def test_add_argparse_argument_missing_anchor():
    with pytest.raises(AnchorNotFound, match=r"pkg/mod.py: anchor not found: add_argument\('--nope'\)"):
        run(dedent(RUN_PY), AddArgparseArgument, flag="--alpha", after="--nope", default=1.0)


# --- WrapCall / SetKeyword / SetParameterDefault / InsertStatements --------------------------------------------


MODEL = """
class Model:
    def __init__(self, configs):
        self.gpt2 = A.from_pretrained("gpt2", x=True)  # time
        self.gpt2_text = A.from_pretrained("gpt2", x=True)

def build():
    gpt2 = A.from_pretrained("gpt2")
"""

TEMPLATE = "P.from_gpt2({call}, alpha=getattr(configs, 'powerformer_alpha', {alpha}))"


def test_wrap_call_wraps_once_and_updates_values():
    out = run(dedent(MODEL), WrapCall, scope="Model.__init__", target="self.gpt2", callee="A.from_pretrained",
              template=TEMPLATE, values={"alpha": 1.0})
    assert out == dedent(MODEL).replace(
        '        self.gpt2 = A.from_pretrained("gpt2", x=True)  # time',
        '        self.gpt2 = P.from_gpt2(A.from_pretrained("gpt2", x=True), '
        'alpha=getattr(configs, "powerformer_alpha", 1.0))  # time',
    )
    again = run(out, WrapCall, scope="Model.__init__", target="self.gpt2", callee="A.from_pretrained",
                template=TEMPLATE, values={"alpha": 0.5})
    assert again == out.replace("1.0))", "0.5))")
    assert run(again, WrapCall, scope="Model.__init__", target="self.gpt2", callee="A.from_pretrained",
               template=TEMPLATE, values={"alpha": 0.5}) == again


def test_wrap_call_missing_anchor():
    with pytest.raises(AnchorNotFound, match=r"self.gpt2 = B.load\(...\) in Model.__init__"):
        run(dedent(MODEL), WrapCall, scope="Model.__init__", target="self.gpt2", callee="B.load", template=TEMPLATE,
            values={"alpha": 1.0})


def test_set_keyword_adds_then_updates():
    once = run(dedent(MODEL), SetKeyword, callee="A.from_pretrained", keyword="alpha", value=2, scope="build")
    assert 'gpt2 = A.from_pretrained("gpt2", alpha=2)' in once and once.count("alpha") == 1
    assert run(once, SetKeyword, callee="A.from_pretrained", keyword="alpha", value=3, scope="build") == once.replace("alpha=2", "alpha=3")
    with pytest.raises(AnchorNotFound):
        run(dedent(MODEL), SetKeyword, callee="Nope", keyword="a", value=1)


def test_set_parameter_default():
    check("def f(a, b=1, *, c=2):\n    pass\n", 'def f(a, b=1, *, c="x"):\n    pass\n',
          SetParameterDefault, function="f", param="c", value="x")
    check("class M:\n    def g(self, a):\n        pass\n", "class M:\n    def g(self, a, alpha=0.5):\n        pass\n",
          SetParameterDefault, function="M.g", param="alpha", value=0.5)
    with pytest.raises(AnchorNotFound, match="def M.h"):
        run("class M:\n    pass\n", SetParameterDefault, function="M.h", param="a", value=1)


def test_set_parameter_default_follows_the_layout_of_the_parameter_list():
    one_per_line = "def f(\n        self,\n        a: int,\n        b: bool = True\n):\n    pass\n"
    out = run(run(one_per_line, SetParameterDefault, function="f", param="c", value=None),
              SetParameterDefault, function="f", param="d", value=1.0)
    assert out == "def f(\n        self,\n        a: int,\n        b: bool = True,\n        c=None,\n        d=1.0\n):\n    pass\n"
    check("def f(a,\n      b=1,):\n    pass\n", "def f(a,\n      b=1,\n      c=2,):\n    pass\n",
          SetParameterDefault, function="f", param="c", value=2)
    check("def f(a, *args, k=1):\n    pass\n", "def f(a, b=2, *args, k=1):\n    pass\n",
          SetParameterDefault, function="f", param="b", value=2)


def test_set_keyword_double_star_and_trailing_comma_layout():
    check("x = f(a, b=1)\n", "x = f(a, b=1, **kw)\n", SetKeyword, callee="f", keyword="**", value=Code("kw"))
    assert run("x = f(a, **old)\n", SetKeyword, callee="f", keyword="**", value=Code("new")) == "x = f(a, **new)\n"
    one_per_line = "x = f(\n    a=1,\n    b=2,\n)\n"
    check(one_per_line, "x = f(\n    a=1,\n    b=2,\n    c=3,\n)\n", SetKeyword, callee="f", keyword="c", value=3)
    check("x = f(a,)\n", "x = f(a, c=3,)\n", SetKeyword, callee="f", keyword="c", value=3)
    check("x = f(\n    a=1, b=2\n)\n", "x = f(\n    a=1, b=2, c=3\n)\n", SetKeyword, callee="f", keyword="c", value=3)


def test_add_keywords_parameter():
    check("class B:\n    def __init__(self, a: int, t=\"s\"):\n        pass\n",
          "class B:\n    def __init__(self, a: int, t=\"s\", **kw):\n        pass\n",
          AddKeywordsParameter, function="B.__init__", name="kw")
    check("def f(\n    a,\n    b,\n):\n    pass\n", "def f(\n    a,\n    b,\n    **kw,\n):\n    pass\n",
          AddKeywordsParameter, function="f", name="kw")
    check("def f(a, *args):\n    pass\n", "def f(a, *args, **kw):\n    pass\n", AddKeywordsParameter, function="f", name="kw")
    check("def f(a, *, k=1):\n    pass\n", "def f(a, *, k=1, **kw):\n    pass\n", AddKeywordsParameter, function="f", name="kw")
    check("def f():\n    pass\n", "def f(**kw):\n    pass\n", AddKeywordsParameter, function="f", name="kw")
    with pytest.raises(AnchorNotFound, match=r"def f with \*\*kw \(it has \*\*other\)"):
        run("def f(**other):\n    pass\n", AddKeywordsParameter, function="f", name="kw")
    with pytest.raises(AnchorNotFound, match="def g"):
        run("def f():\n    pass\n", AddKeywordsParameter, function="g", name="kw")


BLOCKS = """
class T:
    def __init__(self, n):
        self.first = Block(
            d=n, heads=4  # the first
        )
        self.chain = [Block(d=n, heads=4,) for i in range(1, 4)]
        other = range(1, 4)

    def forward(self):
        return range(1, 4)
"""


def test_replace_expression_in_scope_only_then_idempotent_and_updates_constants():
    once = run(dedent(BLOCKS), ReplaceExpression, scope="T.__init__", old="Block(d=n, heads=4)",
               new="make(n, 'x', **kw)")
    assert once.count("make(n, \"x\", **kw)") == 2 and "Block" not in once
    twice = run(once, ReplaceExpression, scope="T.__init__", old="range(1, 4)", new="range(1, layers)")
    assert twice.count("range(1, layers)") == 2 and "return range(1, 4)" in twice  # forward is another scope
    assert run(twice, ReplaceExpression, scope="T.__init__", old="range(1, 4)", new="range(1, layers)") == twice
    assert run(twice, ReplaceExpression, scope="T.__init__", old="Block(d=n, heads=4)", new="make(n, 'x', **kw)") == twice
    updated = run(twice, ReplaceExpression, scope="T.__init__", old="Block(d=n, heads=4)", new="make(n, 'y', **kw)")
    assert updated == twice.replace('"x"', '"y"')
    multi = run(dedent(BLOCKS), ReplaceExpression, scope="T.__init__", old="Block(d=n, heads=4)",
                new="make(\n    n,\n    x=1,\n)")
    assert "        self.first = make(\n            n,\n            x=1,\n        )\n" in multi  # relative indentation
    with pytest.raises(AnchorNotFound, match=r"expression `Block\(d=n, heads=8\)` in T.__init__"):
        run(dedent(BLOCKS), ReplaceExpression, scope="T.__init__", old="Block(d=n, heads=8)", new="x")


def test_extend_tuple_creates_then_adds_only_what_is_missing():
    source = "import a\nfrom b import c\n\nx = 1\n"
    first = run(source, ExtendTuple, name="TYPES", values=("standard", "local"), after="from b import c",
                comment="which types")
    assert first == 'import a\nfrom b import c\n\n# which types\nTYPES = ("standard", "local")\n\nx = 1\n'
    assert run(first, ExtendTuple, name="TYPES", values=("standard", "local"), after="from b import c") == first
    second = run(first, ExtendTuple, name="TYPES", values=("standard", "sparse", "local"), after="from b import c")
    assert 'TYPES = ("standard", "local", "sparse")\n' in second and second.count("TYPES") == 1
    with pytest.raises(AnchorNotFound, match="module-level statement `import z`"):
        run(source, ExtendTuple, name="TYPES", values=("a",), after="import z")
    with pytest.raises(AnchorNotFound, match=r"TYPES = \(...\) holding only literals"):
        run("TYPES = (a, b)\n", ExtendTuple, name="TYPES", values=("a",), after="x")


def test_insert_statements_after_anchor_then_update_constants():
    source = dedent(MODEL)
    args = dict(scope="Model.__init__", after="self.gpt2 = A.from_pretrained('gpt2', x = True)")
    out = run(source, InsertStatements, statements="self.gpt2.alpha = 1.0\n", **args)
    assert '# time\n        self.gpt2.alpha = 1.0\n        self.gpt2_text' in out
    assert run(out, InsertStatements, statements="self.gpt2.alpha = 1.0\n", **args) == out
    assert run(out, InsertStatements, statements="self.gpt2.alpha = 2.0\n", **args) == out.replace("1.0", "2.0")
    with pytest.raises(AnchorNotFound, match="statement `x = 1` in Model.__init__"):
        run(source, InsertStatements, scope="Model.__init__", after="x = 1", statements="y = 2\n")


CONDITIONAL = """(
    Other(d, mode={mode},
          decay=decay or 'none')
    if use_other
    else {call}
)"""


def test_wrap_call_in_a_conditional_keeps_its_layout_and_updates_values():
    source = "class B:\n    def __init__(self, d):\n        self.attn = Std(d, heads=4)\n        self.ffn = F(d)\n"
    args = dict(scope="B.__init__", target="self.attn", callee="Std", template=CONDITIONAL)
    out = run(source, WrapCall, **args, values={"mode": "cosine"})
    assert out == (
        "class B:\n    def __init__(self, d):\n"
        "        self.attn = (\n"
        "            Other(d, mode=\"cosine\",\n"
        "                  decay=decay or \"none\")\n"
        "            if use_other\n"
        "            else Std(d, heads=4)\n"
        "        )\n"
        "        self.ffn = F(d)\n")
    assert run(out, WrapCall, **args, values={"mode": "cosine"}) == out
    assert run(out, WrapCall, **args, values={"mode": "complex"}) == out.replace('"cosine"', '"complex"')
    # the wrapped call may change (another edit added a keyword): it is still recognised, not wrapped twice
    keyed = run(out, SetKeyword, callee="Std", keyword="decay", value=Code("decay"), scope="B.__init__")
    assert "else Std(d, heads=4, decay=decay)\n" in keyed
    assert run(keyed, WrapCall, **args, values={"mode": "cosine"}) == keyed
    for template in ("Other(d)", "Other({call}, {call})"):
        with pytest.raises(ValueError, match="call"):
            run(source, WrapCall, scope="B.__init__", target="self.attn", callee="Std", template=template)


def test_code_values_are_written_as_expressions():
    out = run("def f(a):\n    g(a)\n", SetParameterDefault, function="f", param="b", value=Code("math.pi / 2"))
    assert out == "def f(a, b=math.pi / 2):\n    g(a)\n"
    out = run("g(a)\nh = 'x'\nk = 'y'\n", SetKeyword, callee="g", keyword="mode", value=Code('m or "none"'))
    assert out.startswith("g(a, mode=m or 'none')\n")  # the file's quote


LOOP = """
class M:
    def forward(self, x, flag):
        x = self.a(x)
        for i, block in enumerate(self.layers):
            x = block(x)
            if flag:
                x = block(x)
        return x

    def other(self, x):
        for block in self.layers:
            x = block(x)
"""


def test_insert_statements_in_a_nested_block_of_the_scope_only():
    source = dedent(LOOP)
    args = dict(scope="M.forward", after="x = block(x)")
    out = run(source, InsertStatements, statements="# every second block\nif i % 2:\n    x = self.p(x)\n", **args)
    assert out.count("self.p(x)") == 2  # the loop's body and the nested if's body; not in other()
    assert ("            x = block(x)\n            # every second block\n            if i % 2:\n"
            "                x = self.p(x)\n            if flag:\n") in out
    assert "                x = block(x)\n                # every second block\n" in out
    assert run(out, InsertStatements, statements="if i % 2:\n    x = self.p(x)\n", **args) == out
    with pytest.raises(AnchorNotFound, match="statement `x = block\\(x\\)` in M.nope"):
        run(source, InsertStatements, scope="M.nope", after="x = block(x)", statements="y = 1\n")


def test_insert_statements_after_the_last_of_several_anchors_keeps_an_order():
    source = dedent(LOOP)
    first = dict(scope="M.forward", after="x = self.a(x)", statements="x = self.mask(x)\n")
    second = dict(scope="M.forward", after=["x = self.a(x)", "x = self.mask(x)"], statements="x = self.select(x)\n")
    order = "        x = self.a(x)\n        x = self.mask(x)\n        x = self.select(x)\n        for i"
    one = run(run(source, InsertStatements, **first), InsertStatements, **second)
    two = run(run(source, InsertStatements, **second), InsertStatements, **first)
    assert order in one and one == two
    # each found again anywhere after the anchor: nothing added, constants updated in place
    assert run(run(one, InsertStatements, **first), InsertStatements, **second) == one
    # constants are updated in place, also with other inserted statements between the anchor and them
    scaled = run(one, InsertStatements, scope="M.forward", after=["x = self.a(x)", "x = self.select(x)"],
                 statements="x = x * 1.0\n")
    assert "        x = self.select(x)\n        x = x * 1.0\n        for i" in scaled
    again = run(scaled, InsertStatements, scope="M.forward", after="x = self.a(x)", statements="x = x * 2.0\n")
    assert again == scaled.replace("x * 1.0", "x * 2.0")


def test_rewrite_import_from_absolute_and_relative():
    source = "from tsattn.modules.wcmha import DecayBias\nfrom .wcmha import X\nfrom other import Y\n"
    out = run(source, RewriteImportFrom, old="tsattn.modules.wcmha", new=".PowerformerAttention")
    assert out == "from .PowerformerAttention import DecayBias\nfrom .wcmha import X\nfrom other import Y\n"
    assert run(out, RewriteImportFrom, old=".wcmha", new="pkg.attn").splitlines()[1] == "from pkg.attn import X"


def test_untouched_code_keeps_its_bytes():
    source = "x  =  [1,2 ,3]   # odd   spacing\r\n\r\n\r\nclass A :\r\n  'doc'\r\n  y=( 1 +\r\n      2 )\r\n"
    out = run(source, AddClass, source="class B:\n    pass\n", after="A")
    assert out.startswith(source) and out[len(source):] == "\r\n\r\nclass B:\r\n  pass\r\n"


def test_literal_and_file_quote():
    for value in (None, True, 0, -3, 1.5, -0.25, "it's", 'say "hi"', [1, "a"], ("x",), {"k": 2.0}):
        for q in "'\"":
            assert eval(cst.Module(body=[]).code_for_node(literal(value, q))) == value
    assert file_quote("a = 'x'\nb = 'y'\nc = \"z\"\n") == "'"
    assert file_quote('"""doc"""\na = "x"\n') == '"'
    assert file_quote("") == '"'


# --- templates ----------------------------------------------------------------------------------------------------


def test_generic_template_is_installed_verbatim():
    out = render_templates([Template(MODULES / "wcmha.py", "pkg/PowerformerAttention.py")])
    assert out == {"pkg/PowerformerAttention.py": (MODULES / "wcmha.py").read_bytes()}


def test_template_dependencies_installed_beside_and_imports_rewritten(tmp_path):
    helper = tmp_path / "helper.py"
    helper.write_text("from .util import f\n\nVALUE = f()\n")
    (tmp_path / "util.py").write_text("def f():\n    return 1\n")
    main = tmp_path / "main.py"
    main.write_text("# tsattn-inject test\nfrom tsattn.modules.wcmha import DecayBias  # the bias\nfrom .helper import VALUE\n")
    out = render_templates([Template(main, "models/Main.py"), Template(MODULES / "wcmha.py", "models/Attn.py")])
    assert set(out) == {"models/Main.py", "models/Attn.py", "models/helper.py", "models/util.py"}
    assert out["models/Main.py"] == b"# tsattn-inject test\nfrom .Attn import DecayBias  # the bias\nfrom .helper import VALUE\n"
    assert out["models/helper.py"] == helper.read_bytes() and out["models/Attn.py"] == (MODULES / "wcmha.py").read_bytes()
    # without a name from the recipe, a dependency keeps its own file name
    out = render_templates([Template(main, "models/Main.py")])
    assert out["models/Main.py"].splitlines()[1] == b"from .wcmha import DecayBias  # the bias"
    assert out["models/wcmha.py"] == (MODULES / "wcmha.py").read_bytes()


@pytest.mark.parametrize("line, message", [
    ("import tsattn.modules.wcmha\n", "import tsattn"),
    ("from tsattn.injector import engine\n", "only tsattn.modules.X"),
    ("from ..up import x\n", "only `from .sibling"),
    ("from .missing import x\n", "no template"),
])
def test_template_imports_that_cannot_be_installed_raise(tmp_path, line, message):
    bad = tmp_path / "bad.py"
    bad.write_text(line)
    with pytest.raises(ValueError, match=message):
        render_templates([Template(bad, "models/bad.py")])


def test_template_constant_reads_without_importing():
    assert template_constant(MODULES / "wcmha.py", "DECAY_TYPES") == ("powerlaw", "simpowerlaw", "butterworth", "step", "none")


def test_every_registered_recipe_template_is_marked_and_renders():
    from tsattn.injector.engine import MARKER
    from tsattn.injector.recipe import all_recipes

    for recipe in all_recipes():
        for t in recipe.templates:
            if t.source.parent != MODULES:
                assert t.source.read_bytes().startswith(MARKER), f"{t.source} lacks the {MARKER!r} marker"
        assert render_templates(recipe.templates)


# --- the base class: find the anchor or raise ---------------------------------------------------------------------


class _FindsDefName(AnchoredCodemod):
    """A codemod of a test: its anchor is a top-level def of the given name."""

    def __init__(self, context, name):
        super().__init__(context)
        self.name = name

    def anchor(self):
        return f"def {self.name}"

    def visit_FunctionDef(self, node):
        super().visit_FunctionDef(node)
        self.found = self.found or node.name.value == self.name
        return False


def test_anchored_codemod_raises_naming_the_file_and_the_anchor():
    assert run("def f():\n    pass\n", _FindsDefName, name="f") == "def f():\n    pass\n"
    with pytest.raises(AnchorNotFound) as err:
        run("def g():\n    pass\n", _FindsDefName, name="f")
    assert (err.value.path, err.value.symbol) == ("pkg/mod.py", "def f")
    assert str(err.value) == "pkg/mod.py: anchor not found: def f; nothing was written"


def test_anchored_codemod_forgets_an_anchor_found_in_another_module():
    codemod = _FindsDefName(CodemodContext(filename="pkg/mod.py"), name="f")
    codemod.transform_module(cst.parse_module("def f():\n    pass\n"))
    with pytest.raises(AnchorNotFound):
        codemod.transform_module(cst.parse_module("x = 1\n"))


@pytest.mark.parametrize("codemod, args, symbol", [
    (AddClass, dict(source="class C:\n    pass\n", after="Missing"), "top-level class or def 'Missing'"),
    (AddMethod, dict(class_name="Missing", source="def m(self):\n    pass\n"), "class Missing"),
    (AddMethod, dict(class_name="A", source="def m(self):\n    pass\n", after="nope"), "method A.nope"),
    (AddArgparseArgument, dict(flag="--b", after="--missing"), "add_argument('--missing')"),
    (WrapCall, dict(scope="A.f", target="self.x", callee="Missing", template="g({call})"),
     "self.x = Missing(...) in A.f"),
    (SetKeyword, dict(callee="Missing", keyword="k", value=1, scope="A.f"), "call Missing(...) in A.f"),
    (SetKeyword, dict(callee="Missing", keyword="k", value=1), "call Missing(...)"),
    (SetParameterDefault, dict(function="A.missing", param="p", value=1), "def A.missing"),
    (AddKeywordsParameter, dict(function="A.missing", name="kw"), "def A.missing"),
    (AddKeywordsParameter, dict(function="A.f", name="kw"), "def A.f with **kw (it has **other)"),
    (ReplaceExpression, dict(scope="A.f", old="missing(1)", new="other(1)"), "expression `missing(1)` in A.f"),
    (ReplaceExpression, dict(scope="", old="missing(1)", new="other(1)"), "expression `missing(1)` in module level"),
    (ExtendTuple, dict(name="T", values=(1,), after="import missing"), "module-level statement `import missing`"),
    (InsertStatements, dict(scope="A.f", after="missing = 1", statements="y = 2\n"),
     "statement `missing = 1` in A.f"),
])
def test_every_anchored_codemod_names_the_file_and_its_anchor(codemod, args, symbol):
    code = "import argparse\n\n\nclass A:\n    def f(self, **other):\n        self.x = make(1)\n"
    with pytest.raises(AnchorNotFound) as err:
        run(code, codemod, **args)
    assert (err.value.path, err.value.symbol) == ("pkg/mod.py", symbol)


# --- imports: queued in the context, applied once at the end of the file's pass -----------------------------------


def run_pass(code: str, *codemods) -> str:
    context = CodemodContext(filename="pkg/mod.py", full_module_name="pkg.mod", full_package_name="pkg")
    return FilePass(context, codemods).transform_module(cst.parse_module(code)).code


def test_two_codemods_asking_for_one_import_give_one_import_line():
    before = '"""Doc."""\nimport os\n\nx = 1\n'
    out = run_pass(before, (AddImport, dict(module="torch.nn", names=["Linear"])),
                   (AddClass, dict(source="def f():\n    return Linear\n")),
                   (AddImport, dict(module="torch.nn", names=["Linear"])))
    assert out == '"""Doc."""\nimport os\nfrom torch.nn import Linear\n\nx = 1\n\n\ndef f():\n    return Linear\n'
    assert run_pass(out, (AddImport, dict(module="torch.nn", names=["Linear"]))) == out


def test_imports_of_one_pass_are_merged_and_applied_at_its_end():
    seen = []

    class Peek(AnchoredCodemod):  # what a codemod between the two AddImports sees
        def anchor(self):
            return "anything"

        def transform_module_impl(self, tree):
            seen.append(tree.code)
            self.found = True
            return tree

    before = "from torch import nn\n\nx = 1\n"
    out = run_pass(before, (AddImport, dict(module="torch", names=["cat"])), (Peek, {}),
                   (AddImport, dict(module=".sibling", names=["B", "A"])), (AddImport, dict(module="torch", names=["cat"])))
    assert seen == [before]  # nothing applied before the pass ends
    assert out == "from torch import cat, nn\nfrom pkg.sibling import A, B\n\nx = 1\n"


def test_the_engine_runs_one_pass_per_file():
    from tsattn.injector.engine import apply_edits
    from tsattn.injector.recipe import Edit

    edits = [Edit("pkg/mod.py", AddImport, module="torch", names=["nn"]),
             Edit("pkg/mod.py", AddImport, module="torch", names=["nn"]),
             Edit("pkg/mod.py", SetKeyword, callee="f", keyword="k", value=1)]
    assert apply_edits("pkg/mod.py", b"import os\n\nf()\n", edits) == b"import os\nfrom torch import nn\n\nf(k=1)\n"


def test_a_codemod_may_anchor_on_an_import_queued_before_it_in_the_pass():
    imp = "from pkg.attn import TYPES, make"
    edits = [(AddImport, dict(module=".attn", names=["make", "TYPES"])),
             (ExtendTuple, dict(name="ENABLED", values=("a",), after=imp, comment="enabled"))]
    before = "import os\n\n\nclass A:\n    pass\n"
    out = run_pass(before, *edits)
    assert out == f"import os\n{imp}\n\n# enabled\nENABLED = (\"a\",)\n\n\nclass A:\n    pass\n"
    assert run_pass(out, *edits) == out
    # the module already imported: the import merges into it, so the anchor is not a statement of its own
    with pytest.raises(AnchorNotFound):
        run_pass("from pkg.attn import other\n\nx = 1\n", *edits)


def test_a_libcst_codemod_of_a_recipe_queues_its_imports_into_the_same_pass():
    from libcst.codemod import VisitorBasedCodemodCommand
    from libcst.codemod.visitors import AddImportsVisitor

    class RenameCalls(VisitorBasedCodemodCommand):  # a plain libcst codemod, with metadata and its own import
        def leave_Call(self, original_node, updated_node):
            AddImportsVisitor.add_needed_import(self.context, "torch", "nn")
            return updated_node.with_changes(func=cst.Name("g"))

    out = run_pass("import os\n\nf()\n", (RenameCalls, {}), (AddImport, dict(module="torch", names=["nn"])))
    assert out == "import os\nfrom torch import nn\n\ng()\n"


def test_add_import_joins_the_first_import_block_of_a_module_that_starts_with_other_statements():
    source = textwrap.dedent("""\
        __all__ = ['X']

        # Cell
        import torch
        from a import b

        class X: pass
        import late
    """)
    out = run(source, AddImport, module="layers.decay", names=["D"])
    assert out == source.replace("from a import b\n", "from a import b\nfrom layers.decay import D\n")
    assert run(out, AddImport, module="layers.decay", names=["D"]) == out
    merged = run(out, AddImport, module="layers.decay", names=["E"])
    assert merged.count("from layers.decay import") == 1 and ("import E, D\n" in merged or "import D, E\n" in merged)
    assert run("x = 1\n", AddImport, module="m", names=["n"]).startswith("from m import n\n")


def test_add_argparse_argument_with_an_action_adds_and_updates_a_flag():
    source = "p.add_argument('--a', type=int, default=0)\nrest = 1\n"
    out = run(source, AddArgparseArgument, flag="--t", after="--a", action="store_true", default=False, help="h")
    assert out == source.replace("rest", "p.add_argument('--t', action='store_true', default=False, help='h')\nrest")
    again = run(out, AddArgparseArgument, flag="--t", after="--a", action="store_false", help="h2")
    assert again == source.replace("rest", "p.add_argument('--t', action='store_false', help='h2')\nrest")
