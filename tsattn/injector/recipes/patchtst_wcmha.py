"""PatchTST + Powerformer: turn yuqinie98/PatchTST's ``PatchTST_supervised`` tree into the Powerformer authors' model.

Powerformer (khegazy/Powerformer: ``layers/Causal_local_masks.py``, ``layers/Powerformer_backbone.py``,
``models/Powerformer.py``) is PatchTST with a decay mask added to every layer's attention scores. This recipe
(target: the root of a PatchTST clone, ``--target ./PatchTST``):

- adds ``PatchTST_supervised/layers/powerformer_decay.py`` (the template ``tsattn/modules/powerformer_decay.py``,
  verbatim: the authors' masks, cached per shape);
- threads ``attn_decay_type='none', attn_decay_scale=0.0, train_attn_decay=False`` through
  ``layers/PatchTST_backbone.py``: parameters of ``PatchTST_backbone``, ``TSTiEncoder``, ``TSTEncoder``,
  ``TSTEncoderLayer``, ``_MultiheadAttention`` and ``_ScaledDotProductAttention`` (``__init__``), passed on to the
  next one's constructor;
- ``_ScaledDotProductAttention.__init__`` builds ``self.attn_decay = PowerformerDecay(...)`` (and, with a decay,
  replaces the attention dropout by ``nn.Identity()``: the authors apply none then); its ``forward`` adds
  the mask where the authors do: after the scaling, the previous layer's scores (``prev``) and ``attn_mask``,
  before the key padding mask and the softmax. The returned scores include it, so with ``res_attention=True``
  (PatchTST's default) each layer passes its decay on to the next, as in the authors' model;
- ``models/PatchTST.py``'s ``Model.__init__`` reads ``configs.attn_decay_type`` / ``attn_decay_scale`` /
  ``train_attn_decay`` (``getattr`` with the option values as fallbacks) and passes them to every
  ``PatchTST_backbone(...)``;
- ``run_longExp.py`` gains ``--attn_decay_type`` (case-insensitive: the authors' scripts pass ``powerLaw``),
  ``--attn_decay_scale`` and ``--train_attn_decay`` (store_true) after ``--individual``.

Their ``none`` is PatchTST's own bidirectional attention (tsattn's WCMHA ``decay="none"`` is causal; here that
is ``causal``). With ``none`` the model is today's PatchTST bit for bit, and without ``train_attn_decay`` the
decay has no state at all, so checkpoints of unpatched PatchTST load strictly; with it, one scalar per layer
(``...sdp_attn.attn_decay.scale``) is the only new state.
"""

from __future__ import annotations

import ast
import functools
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import libcst as cst
import libcst.matchers as m
from libcst.codemod.visitors import AddImportsVisitor

from tsattn.injector.codemods import NO_VALUE, AddArgparseArgument, AddImport, Code, InsertStatements, SetKeyword, \
    SetParameterDefault, literal
from tsattn.injector.errors import UsageError
from tsattn.injector.recipe import Edit, Option, Recipe, register
from tsattn.injector.templates import MODULES, Template, template_constant

TEMPLATE = MODULES / "powerformer_decay.py"
DECAY_TYPES = tuple(template_constant(TEMPLATE, "DECAY_TYPES"))

ROOT = "PatchTST_supervised"
BACKBONE = f"{ROOT}/layers/PatchTST_backbone.py"
MODEL = f"{ROOT}/models/PatchTST.py"
RUN = f"{ROOT}/run_longExp.py"
DECAY_MODULE = f"{ROOT}/layers/powerformer_decay.py"

# --- codemods of this recipe ------------------------------------------------------------------------------------

_IMPORT = m.SimpleStatementLine(body=[m.OneOf(m.Import(), m.ImportFrom())])


class AddImportToImports(AddImport):
    """``AddImport`` for a module whose imports follow other statements (PatchTST's files start with
    ``__all__ = [...]``): the import is merged into, or added after, the module's first run of top-level import
    statements, instead of above everything. A module without imports gets it at the top, as ``AddImport``."""

    DESCRIPTION = "Add an import to the module's first block of imports."

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        body = list(tree.body)
        start = next((i for i, s in enumerate(body) if isinstance(s, cst.SimpleStatementLine) and m.matches(s, _IMPORT)),
                     None)
        if start is None:
            return super().transform_module_impl(tree)
        end = start
        while end < len(body) and isinstance(body[end], cst.SimpleStatementLine) and m.matches(body[end], _IMPORT):
            end += 1
        block = AddImportsVisitor(self.context, self.imports).transform_module(tree.with_changes(body=body[start:end]))
        return tree.with_changes(body=[*body[:start], *block.body, *body[end:]])


class AddArgparseAction(AddArgparseArgument):
    """``AddArgparseArgument`` with ``action=`` (``"store_true"``: a flag that takes no value), written right
    after the option string; updated in place like the others."""

    DESCRIPTION = "Add an argparse flag with an action (store_true, ...) next to an anchor argument, or update it."

    def __init__(self, context, flag: str, after: str, action: str, default: Any = NO_VALUE,
                 help: Optional[str] = None) -> None:
        super().__init__(context, flag, after, default=default, help=help)
        self.action = action

    def _call(self, func: cst.BaseExpression) -> cst.Call:
        call = super()._call(func)
        action = cst.Arg(value=literal(self.action, self.quote), keyword=cst.Name("action"),
                         equal=cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""),
                                               whitespace_after=cst.SimpleWhitespace("")))
        return call.with_changes(args=[call.args[0], action, *call.args[1:]])


# --- option checks: the template's own, without importing torch -------------------------------------------------


_CHECKS = ("normalize_decay_type", "check_decay_options")  # plain Python: math and the module's constants


@functools.lru_cache(maxsize=None)
def _template_function(name: str) -> Callable[..., Any]:
    """One of the template's option checks (``_CHECKS``), compiled from its source with the template's
    module-level constants and ``math`` only, so that ``tsattn-inject`` validates exactly as the model will
    without importing torch."""
    tree = ast.parse(TEMPLATE.read_bytes())
    keep = [n for n in tree.body if (isinstance(n, ast.FunctionDef) and n.name in _CHECKS) or (
        isinstance(n, ast.Assign) and all(isinstance(t, ast.Name) and t.id.isupper() for t in n.targets)
        and isinstance(n.value, (ast.Constant, ast.Tuple)))]
    module = ast.Module(body=[ast.ImportFrom("__future__", [ast.alias("annotations")], 0),
                              ast.Import([ast.alias("math")]), *keep], type_ignores=[])
    namespace: Dict[str, Any] = {}
    exec(compile(ast.fix_missing_locations(module), str(TEMPLATE), "exec"), namespace)
    return namespace[name]


def validate(options: Mapping[str, Any]) -> None:
    """The decay type and scale the model will accept (the template's ``check_decay_options``)."""
    try:
        _template_function("check_decay_options")(options["attn_decay_type"], options["attn_decay_scale"], False)
    except ValueError as exc:
        raise UsageError(f"--attn_decay_type {options['attn_decay_type']} --attn_decay_scale "
                         f"{options['attn_decay_scale']}: {exc}") from None


# --- anchors (upstream 204c21e) and what is inserted ------------------------------------------------------------

CHAIN = [  # (constructor, the call in it that builds the next one)
    ("PatchTST_backbone.__init__", "TSTiEncoder"),
    ("TSTiEncoder.__init__", "TSTEncoder"),
    ("TSTEncoder.__init__", "TSTEncoderLayer"),
    ("TSTEncoderLayer.__init__", "_MultiheadAttention"),
    ("_MultiheadAttention.__init__", "_ScaledDotProductAttention"),
    ("_ScaledDotProductAttention.__init__", None),
]
PARAMS = [("attn_decay_type", "none"), ("attn_decay_scale", 0.0), ("train_attn_decay", False)]

SDPA_INIT_ANCHOR = "self.lsa = lsa"
SDPA_INIT = """\
# (tsattn-inject) Powerformer's attention decay (layers/powerformer_decay.py); with a decay the authors apply no
# attention dropout
self.attn_decay = PowerformerDecay(attn_decay_type, attn_decay_scale, train_attn_decay)
if self.attn_decay.is_active:
    self.attn_dropout = nn.Identity()
"""

SDPA_FORWARD_ANCHOR = """\
if attn_mask is not None:
    if attn_mask.dtype == torch.bool:
        attn_scores.masked_fill_(attn_mask, -np.inf)
    else:
        attn_scores += attn_mask
"""
SDPA_FORWARD = """\
# (tsattn-inject) Powerformer: the decay mask, after the scaling and the residual scores (prev), before the
# softmax; the scores returned (and passed on as prev) include it
attn_decay = self.attn_decay(attn_scores.shape[-2], attn_scores.shape[-1], attn_scores.device, attn_scores.dtype)
if attn_decay is not None:
    attn_scores = attn_scores + attn_decay
"""

MODEL_ANCHOR = "kernel_size = configs.kernel_size"
MODEL_CONFIG = """\
# (tsattn-inject) Powerformer's attention decay (run_longExp.py --attn_decay_type, --attn_decay_scale, --train_attn_decay)
attn_decay_type = getattr(configs, 'attn_decay_type', {type!r})
attn_decay_scale = getattr(configs, 'attn_decay_scale', {scale!r})
train_attn_decay = getattr(configs, 'train_attn_decay', False)
"""

HELP_TYPE = ("Powerformer attention decay, case-insensitive: none (PatchTST's bidirectional attention), causal, step, "
             "butter1, butter2, powerlaw, simpowerlaw")
HELP_SCALE = ("Powerformer decay scale (powerlaw: -|s|*log(dt+1); simpowerlaw: -dt**s; step: width int(s) >= 1; "
              "butter1/2: time scale > 0)")
HELP_TRAIN = "train the decay exponent, one scalar per layer (powerlaw, simpowerlaw)"


def edits(options: Mapping[str, Any]) -> List[Edit]:
    kind, scale = options["attn_decay_type"], float(options["attn_decay_scale"])
    out: List[Edit] = [Edit(BACKBONE, AddImportToImports, module="layers.powerformer_decay", names=["PowerformerDecay"])]
    for function, callee in CHAIN:
        out += [Edit(BACKBONE, SetParameterDefault, function=function, param=p, value=v) for p, v in PARAMS]
        if callee is not None:
            out += [Edit(BACKBONE, SetKeyword, callee=callee, keyword=p, value=Code(p), scope=function)
                    for p, _ in PARAMS]
    out += [
        Edit(BACKBONE, InsertStatements, scope="_ScaledDotProductAttention.__init__", after=SDPA_INIT_ANCHOR,
             statements=SDPA_INIT),
        Edit(BACKBONE, InsertStatements, scope="_ScaledDotProductAttention.forward", after=SDPA_FORWARD_ANCHOR,
             statements=SDPA_FORWARD),
        Edit(MODEL, InsertStatements, scope="Model.__init__", after=MODEL_ANCHOR,
             statements=MODEL_CONFIG.format(type=kind, scale=scale)),
        *[Edit(MODEL, SetKeyword, callee="PatchTST_backbone", keyword=p, value=Code(p), scope="Model.__init__")
          for p, _ in PARAMS],
        Edit(RUN, AddArgparseArgument, flag="--attn_decay_type", after="--individual", type="str.lower",
             default=kind, choices=DECAY_TYPES, help=HELP_TYPE),
        Edit(RUN, AddArgparseArgument, flag="--attn_decay_scale", after="--attn_decay_type", type="float",
             default=scale, help=HELP_SCALE),
        Edit(RUN, AddArgparseAction, flag="--train_attn_decay", after="--attn_decay_scale", action="store_true",
             default=False, help=HELP_TRAIN),
    ]
    return out


RECIPE = register(Recipe(
    kind="patchtst",
    feature="wcmha",
    description="Powerformer (the authors' model): decay-masked attention in PatchTST_supervised; "
                "--attn_decay_type/--attn_decay_scale/--train_attn_decay",
    edits=edits,
    templates=(Template(TEMPLATE, DECAY_MODULE),),
    options=(
        Option("attn_decay_type", str, "none",
               "default of run_longExp.py --attn_decay_type (none: PatchTST's bidirectional attention, unchanged)",
               choices=DECAY_TYPES),
        Option("attn_decay_scale", float, 0.0, "default of run_longExp.py --attn_decay_scale"),
    ),
    validate=validate,
    notes="needs nothing beyond PatchTST's requirements; --attn_decay_type none (the default) is today's PatchTST "
          "bit for bit (their none is bidirectional, unlike tsattn's WCMHA decay='none', which is causal); "
          "unpatched checkpoints load (a trained decay scale, one per layer, is the only new state)",
))
