"""Time-Series-Library + Powerformer WCMHA: ``FullAttention`` gains the authors' decay, and every model that builds
it for self-attention passes ``--attn_decay_type``, ``--attn_decay_scale`` and ``--train_attn_decay`` through.

Upstream ``thuml/Time-Series-Library`` builds most of its attention models from ``FullAttention`` in
``layers/SelfAttention_Family.py``. This recipe:

- adds ``layers/PowerformerDecay.py`` (the template ``tsattn/modules/powerformer_decay.py``, verbatim: the
  authors' decay masks, ``layers/Causal_local_masks.py`` of khegazy/Powerformer);
- gives ``FullAttention.__init__`` the authors' parameters ``attn_decay_type=None, attn_decay_scale=0.0,
  train_attn_decay=False`` and a ``self.attn_decay = PowerformerDecay(...)``; with a decay the attention dropout
  is off (``nn.Identity()``), as in the authors' ``FullAttention`` (``do_dropout = mask_type is None``);
- in ``FullAttention.forward`` adds the decay's additive (L, S) mask to the scaled scores before the softmax:
  ``softmax(scale * scores + mask)``. The mask is -inf for every key after the query, so with a decay the
  attention is causal over the token axis whatever ``mask_flag`` says; a ``mask_flag`` causal mask, applied as
  before, only repeats those -inf. Without a decay (None / ``none``) the mask is None and the softmax takes
  ``scale * scores`` as today: the same operations, bit for bit, and no new state;
- adds ``--attn_decay_type`` (default None), ``--attn_decay_scale`` (0.0) and ``--train_attn_decay`` (a
  ``store_true`` flag) to ``run.py`` after ``--factor``;
- passes ``attn_decay_type=getattr(configs, 'attn_decay_type', None)`` (and the other two) to each
  ``FullAttention`` built for SELF-attention (``SELF_ATTENTION`` below); cross-attention (the Transformer
  decoder's and TimeXer's ``cross_attention``, Crossformer's router ``dim_sender``/``dim_receiver`` and its
  decoder's cross-attention) is left as it is.

The decay runs over token distance: over time steps (Transformer), patches (PatchTST, PAttn, TimeXer,
MultiPatchFormer's patch attention), segments (Crossformer's time stage), but over variates for iTransformer and
MultiPatchFormer's channel attention, where it is not a time decay (the README's table says which is which).
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence, Tuple

import libcst as cst
import libcst.matchers as m
from libcst.codemod import CodemodContext
from libcst.helpers import get_full_name_for_node

from tsattn.injector.codemods import (AddArgparseArgument, AddImport, Code, InsertStatements,
                                      ReplaceExpression, SetKeyword, SetParameterDefault)
from tsattn.injector.recipe import Edit, Recipe, register
from tsattn.injector.templates import MODULES, Template, template_constant

KIND = "time_series_library"
ATTENTION_FILE = "layers/SelfAttention_Family.py"
DECAY_TEMPLATE = MODULES / "powerformer_decay.py"
DECAY_MODULE = "layers/PowerformerDecay.py"
DECAY_TYPES = tuple(template_constant(DECAY_TEMPLATE, "DECAY_TYPES"))

PARAMETERS = (("attn_decay_type", None), ("attn_decay_scale", 0.0), ("train_attn_decay", False))
"""FullAttention's new parameters and their defaults (the authors' names; also run.py's defaults)."""

SkipArg = Tuple[str, int, str]
"""(enclosing callee, positional index, keyword): a ``FullAttention(...)`` inside that argument is not edited."""

SELF_ATTENTION: Tuple[Tuple[str, str, Optional[str], Tuple[SkipArg, ...]], ...] = (
    # (file, scope, only inside the assignment to, skip the FullAttention calls inside these arguments)
    ("models/Transformer.py", "Model.__init__", None, (("DecoderLayer", 1, "cross_attention"),)),
    ("models/PatchTST.py", "Model.__init__", None, ()),
    ("models/iTransformer.py", "Model.__init__", None, ()),
    ("models/PAttn.py", "Model.__init__", None, ()),
    ("models/TimeXer.py", "Model.__init__", None, (("EncoderLayer", 1, "cross_attention"),)),
    ("models/MultiPatchFormer.py", "Model.__init__", None, ()),
    # Crossformer: its encoder's and decoder's TwoStageAttentionLayer attend over segments in time_attention
    (ATTENTION_FILE, "TwoStageAttentionLayer.__init__", "self.time_attention", ()),
)

INIT_STATEMENTS = '''\
self.attn_decay = PowerformerDecay(attn_decay_type, attn_decay_scale, train_attn_decay)
if self.attn_decay.is_active:  # Powerformer: no attention dropout with a decay
    self.dropout = nn.Identity()
'''
SCORES = 'scores = torch.einsum("blhe,bshe->bhls", queries, keys)'
MASK_STATEMENT = "attn_decay_mask = self.attn_decay(L, S, queries.device, scores.dtype)\n"
SOFTMAX = "torch.softmax(scale * scores, dim=-1)"
DECAYED_SOFTMAX = ("torch.softmax(scale * scores if attn_decay_mask is None else scale * scores + attn_decay_mask, "
                   "dim=-1)")


class SetAttentionKeywords(SetKeyword):
    """``SetKeyword`` for several keywords (``keywords``: name -> value, in order) and for some of the calls to
    ``callee`` in ``scope``: with ``only``, those inside the assignment ``only = ...`` (``"self.time_attention"``);
    with ``skip``, not those inside argument ``position`` (or keyword ``keyword``) of a call to an enclosing
    callee (``("DecoderLayer", 1, "cross_attention")``: the decoder's cross-attention). No call left to edit
    raises ``AnchorNotFound`` as ``SetKeyword`` does. One pass over the module for all the keywords."""

    DESCRIPTION = "Add or update keyword arguments of the calls that build self-attention."

    def __init__(self, context: CodemodContext, callee: str, keywords: Mapping[str, Any], scope: str,
                 only: Optional[str] = None, skip: Sequence[SkipArg] = ()) -> None:
        if not keywords:
            raise ValueError("SetAttentionKeywords: keywords must name at least one keyword")
        self.keywords = dict(keywords)
        first, value = next(iter(self.keywords.items()))
        super().__init__(context, callee, first, value, scope)
        self.only, self.skip = only, tuple(skip)
        self.allowed: set = set()
        self.excluded: set = set()

    def _calls(self, node: cst.CSTNode) -> List[cst.Call]:
        return [c for c in m.findall(node, m.Call()) if get_full_name_for_node(c.func) == self.callee]

    def visit_Assign(self, node: cst.Assign) -> None:
        if self.only is not None and self.scope == self.target_scope and len(node.targets) == 1 \
                and get_full_name_for_node(node.targets[0].target) == self.only:
            self.allowed.update(map(id, self._calls(node.value)))

    def visit_Call(self, node: cst.Call) -> None:
        if self.scope != self.target_scope:
            return
        name = get_full_name_for_node(node.func)
        for outer, position, keyword in self.skip:
            if name != outer:
                continue
            positional = [a for a in node.args if a.keyword is None and not a.star]
            for arg in node.args:
                if (arg.keyword is not None and arg.keyword.value == keyword) or \
                        (arg.keyword is None and not arg.star and positional.index(arg) == position):
                    self.excluded.update(map(id, self._calls(arg.value)))

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.Call:
        if id(original_node) in self.excluded or (self.only is not None and id(original_node) not in self.allowed):
            return updated_node
        before = len(updated_node.args)
        for self.keyword, self.value in self.keywords.items():  # SetKeyword's edit, once per keyword
            updated_node = super().leave_Call(original_node, updated_node)
        return self._one_per_line(updated_node, before)

    @staticmethod
    def _one_per_line(call: cst.Call, before: int) -> cst.Call:
        """A call written over several lines (a comma followed by a line break) gets each added argument on a line
        of its own, indented as that continuation line: the layout upstream's calls have."""
        args = list(call.args)
        breaks = [a.comma.whitespace_after for a in args[:before]
                  if isinstance(a.comma, cst.Comma) and isinstance(a.comma.whitespace_after, cst.ParenthesizedWhitespace)]
        if not breaks or len(args) == before:
            return call
        for i in range(before - 1, len(args) - 1):  # the commas in front of the added arguments
            comma = args[i].comma if isinstance(args[i].comma, cst.Comma) else cst.Comma()
            args[i] = args[i].with_changes(comma=comma.with_changes(whitespace_after=breaks[-1].deep_clone()))
        return call.with_changes(args=args)


def _getattr(name: str, default: Any) -> Code:
    return Code(f"getattr(configs, {name!r}, {default!r})")


def edits(options: Mapping[str, Any]) -> List[Edit]:
    out = [Edit(ATTENTION_FILE, AddImport, module=".PowerformerDecay", names=["PowerformerDecay"])]
    out += [Edit(ATTENTION_FILE, SetParameterDefault, function="FullAttention.__init__", param=name, value=default)
            for name, default in PARAMETERS]
    out += [
        Edit(ATTENTION_FILE, InsertStatements, scope="FullAttention.__init__",
             after="self.dropout = nn.Dropout(attention_dropout)", statements=INIT_STATEMENTS),
        Edit(ATTENTION_FILE, InsertStatements, scope="FullAttention.forward", after=SCORES, statements=MASK_STATEMENT),
        Edit(ATTENTION_FILE, ReplaceExpression, scope="FullAttention.forward", old=SOFTMAX, new=DECAYED_SOFTMAX),
    ]
    for path, scope, only, skip in SELF_ATTENTION:
        out.append(Edit(path, SetAttentionKeywords, callee="FullAttention", scope=scope, only=only, skip=skip,
                        keywords={name: _getattr(name, default) for name, default in PARAMETERS}))
    out += [
        Edit("run.py", AddArgparseArgument, flag="--attn_decay_type", after="--factor", type="str", default=None,
             help=f"Powerformer attention decay of FullAttention self-attention, case-insensitive: "
                  f"{', '.join(DECAY_TYPES)} (default None = none: the original attention; any other is causal)"),
        Edit("run.py", AddArgparseArgument, flag="--attn_decay_scale", after="--attn_decay_type", type="float",
             default=0.0, help="Powerformer decay scale (powerlaw: -|scale| * log(dt + 1); step: the width)"),
        Edit("run.py", AddArgparseArgument, flag="--train_attn_decay", after="--attn_decay_scale", action="store_true",
             default=False, help="train the decay's exponent (powerlaw, simpowerlaw): one scalar per attention"),
    ]
    return out



RECIPE = register(Recipe(
    kind=KIND,
    feature="wcmha",
    description="Powerformer decay in FullAttention self-attention (Transformer, PatchTST, iTransformer, PAttn, "
                "TimeXer, MultiPatchFormer, Crossformer); --attn_decay_type/_scale, --train_attn_decay",
    edits=edits,
    templates=(Template(DECAY_TEMPLATE, DECAY_MODULE),),
    notes="needs nothing beyond Time-Series-Library's requirements (torch); no decay (the default) is today's "
          "attention bit for bit and adds no state, so unpatched checkpoints load; with a decay the attention is "
          "causal and its dropout off. Over variates (iTransformer, MultiPatchFormer's channel attention) the "
          "decay is not a time decay",
))
