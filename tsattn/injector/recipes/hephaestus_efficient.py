"""Hephaestus: the efficient attentions (local, sparse, featurewise, chunked, flash) and WCMHA, chosen per model.

Upstream ``IndustryTransformer/Hephaestus`` (``main``, tried at 288bf88) builds one dense ``MultiHeadAttention4D``
per ``TransformerBlock`` in ``hephaestus/timeseries_models/models.py``; ``TimeSeriesTransformer`` builds four
blocks (``transformer_block_0`` and three ``for i in range(1, 4)``), ``TimeSeriesDecoder`` one
``TimeSeriesTransformer``, and ``hephaestus/training/training.py``'s ``TabularDecoder`` (the LightningModule the
scripts train) one ``TimeSeriesDecoder``. Nothing else in the repository builds them (its notebooks and
``planets.py`` call ``TabularDecoder``; ``encoder_decoder.py``, which the guide mentions, does not exist on
``main``). Features:

    efficient     every type: standard, local, sparse, featurewise, chunked, flash, wcmha
    local, sparse, featurewise, chunked, flash, wcmha
                  standard and that one type

Every feature:

- adds ``hephaestus/timeseries_models/efficient_attention.py`` (``tsattn/modules/efficient_attention.py``) with
  ``wcmha.py`` beside it, verbatim, and ``efficient_transformer.py`` (``EfficientTimeSeriesTransformer``,
  ``benchmark_attention_mechanisms``; ``hephaestus_templates/``);
- in ``models.py``: ``ENABLED_ATTENTION_TYPES`` (a tuple each feature adds its types to, so that features
  injected one after another add up), ``build_attention(attention_type, d_model, num_heads, **attention_kwargs)``
  (the factory: a type not enabled, or unknown, raises ValueError listing the valid ones), and
  ``TransformerBlock.__init__(..., attention_type="standard", **attention_kwargs)`` building its attention with
  it instead of ``MultiHeadAttention4D(...)``;
- threads ``n_layers=4, attention_type="standard", attention_kwargs=None`` through ``TimeSeriesTransformer``
  (``range(1, 4)`` becomes ``range(1, self.n_layers)``), ``TimeSeriesDecoder`` and ``TabularDecoder``.

Defaults keep today's behaviour: ``standard`` is ``efficient_attention.StandardAttention``, which computes what
``MultiHeadAttention4D`` computes with the same parameters drawn in the same order, so a model built under a
seed has the same weights and outputs, and state_dict keys are unchanged (checkpoints load both ways). The
attentions keep the call ``(query, key, value, mask=None) -> (output, weights or None)`` that
``TransformerBlock.forward`` makes. No options: the type and its keywords are chosen at construction
(``TimeSeriesDecoder(config, attention_type="local", attention_kwargs={"window_size": 256})``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Mapping, Sequence

from tsattn.injector.codemods import (
    AddClass,
    AddImport,
    AddKeywordsParameter,
    Code,
    ExtendTuple,
    InsertStatements,
    ReplaceExpression,
    SetKeyword,
    SetParameterDefault,
)
from tsattn.injector.recipe import Edit, Recipe, register
from tsattn.injector.templates import MODULES, Template, template_constant

TEMPLATES = Path(__file__).resolve().parent / "hephaestus_templates"
ATTENTION_TYPES = tuple(template_constant(MODULES / "efficient_attention.py", "ATTENTION_TYPES"))
EFFICIENT_TYPES = tuple(t for t in ATTENTION_TYPES if t != "standard")

PACKAGE = "hephaestus/timeseries_models"
MODELS = f"{PACKAGE}/models.py"
TRAINING = "hephaestus/training/training.py"

# --- anchors (upstream 288bf88) ------------------------------------------------------------------------------------

BLOCK_INIT = "TransformerBlock.__init__"
TRANSFORMER_INIT = "TimeSeriesTransformer.__init__"
DECODER_INIT = "TimeSeriesDecoder.__init__"
TABULAR_INIT = "TabularDecoder.__init__"
UPSTREAM_ATTENTION = "MultiHeadAttention4D(embed_dim=d_model, num_heads=num_heads, dropout=dropout_rate)"
UPSTREAM_CHAIN = "range(1, 4)"

# --- what is inserted ----------------------------------------------------------------------------------------------

IMPORT = "from hephaestus.timeseries_models.efficient_attention import ATTENTION_TYPES, make_attention"

BUILD_ATTENTION = '''
def build_attention(attention_type, d_model, num_heads, **attention_kwargs):
    """(tsattn-inject) A TransformerBlock's attention, by name: one of ENABLED_ATTENTION_TYPES.

    Built by efficient_attention.make_attention with the type's keywords (attention_kwargs, e.g. window_size
    for local; see efficient_transformer.py); "standard" computes what MultiHeadAttention4D computes (same
    parameters, initialisation and outputs). Every type is called as (query, key, value, mask=None) ->
    (output, weights or None). Raises ValueError listing the valid types, or the type's valid keywords.
    """
    if attention_type not in ENABLED_ATTENTION_TYPES:
        if attention_type in ATTENTION_TYPES:
            raise ValueError(
                f"attention_type {attention_type!r} is not enabled in this repository (tsattn-inject "
                f"--feature {attention_type}, or --feature efficient, adds it); valid types: "
                f"{list(ENABLED_ATTENTION_TYPES)}"
            )
        raise ValueError(
            f"unknown attention_type {attention_type!r}; valid types: {list(ENABLED_ATTENTION_TYPES)}"
        )
    return make_attention(attention_type, d_model, num_heads, **attention_kwargs)
'''

FACTORY_CALL = """build_attention(
    attention_type, d_model, num_heads, dropout=dropout_rate, **attention_kwargs
)"""

BLOCK_STATE = """\
# (tsattn-inject) the attention is chosen by name: build_attention(attention_type, ..., **attention_kwargs)
self.attention_type = attention_type
self.attention_kwargs = dict(attention_kwargs)
"""

TRANSFORMER_STATE = """\
# (tsattn-inject) n_layers blocks (transformer_block_0 and n_layers - 1 in the chain), each with this attention
if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
    raise ValueError(f"n_layers must be an integer >= 1; got {n_layers!r}")
self.n_layers = n_layers
self.attention_type = attention_type
self.attention_kwargs = dict(attention_kwargs or {})
"""

DECODER_STATE = """\
# (tsattn-inject) passed to TimeSeriesTransformer
self.n_layers = n_layers
self.attention_type = attention_type
self.attention_kwargs = dict(attention_kwargs or {})
"""

THREADED = [("n_layers", 4), ("attention_type", "standard"), ("attention_kwargs", None)]


def _params(function: str, path: str) -> List[Edit]:
    return [Edit(path, SetParameterDefault, function=function, param=name, value=value) for name, value in THREADED]


def _keywords(callee: str, scope: str, path: str, values: Sequence[tuple]) -> List[Edit]:
    return [Edit(path, SetKeyword, callee=callee, keyword=k, value=Code(v), scope=scope) for k, v in values]


def _edits(types: Sequence[str]) -> List[Edit]:
    return [
        Edit(MODELS, AddImport, module=".efficient_attention", names=["ATTENTION_TYPES", "make_attention"]),
        Edit(MODELS, ExtendTuple, name="ENABLED_ATTENTION_TYPES", values=("standard",) + tuple(types), after=IMPORT,
             comment="(tsattn-inject) the attention types TransformerBlock accepts (tsattn-inject features add theirs)"),
        Edit(MODELS, AddClass, source=BUILD_ATTENTION, after="FeedForwardNetwork"),
        # TransformerBlock: the attention by name
        Edit(MODELS, SetParameterDefault, function=BLOCK_INIT, param="attention_type", value="standard"),
        Edit(MODELS, AddKeywordsParameter, function=BLOCK_INIT, name="attention_kwargs"),
        Edit(MODELS, InsertStatements, scope=BLOCK_INIT, after="self.dropout_rate = dropout_rate", statements=BLOCK_STATE),
        Edit(MODELS, ReplaceExpression, scope=BLOCK_INIT, old=UPSTREAM_ATTENTION, new=FACTORY_CALL),
        # TimeSeriesTransformer: n_layers blocks with the attention
        *_params(TRANSFORMER_INIT, MODELS),
        Edit(MODELS, InsertStatements, scope=TRANSFORMER_INIT, after="self.n_heads = n_heads",
             statements=TRANSFORMER_STATE),
        *_keywords("TransformerBlock", TRANSFORMER_INIT, MODELS,
                   [("attention_type", "self.attention_type"), ("**", "self.attention_kwargs")]),
        Edit(MODELS, ReplaceExpression, scope=TRANSFORMER_INIT, old=UPSTREAM_CHAIN, new="range(1, self.n_layers)"),
        # TimeSeriesDecoder and TabularDecoder pass them on
        *_params(DECODER_INIT, MODELS),
        Edit(MODELS, InsertStatements, scope=DECODER_INIT, after="self.n_heads = n_heads", statements=DECODER_STATE),
        *_keywords("TimeSeriesTransformer", DECODER_INIT, MODELS,
                   [(n, f"self.{n}") for n, _ in THREADED]),
        *_params(TABULAR_INIT, TRAINING),
        *_keywords("TimeSeriesDecoder", TABULAR_INIT, TRAINING, [(n, n) for n, _ in THREADED]),
    ]


TEMPLATES_OF_EVERY_FEATURE = (
    Template(MODULES / "efficient_attention.py", f"{PACKAGE}/efficient_attention.py"),
    Template(TEMPLATES / "efficient_transformer.py", f"{PACKAGE}/efficient_transformer.py"),
)

NOTES = ("no options: TimeSeriesDecoder(config, attention_type=..., attention_kwargs={...}, n_layers=4); defaults "
         "are today's model (same weights under a seed, same outputs, same state_dict keys); features add up "
         "(ENABLED_ATTENTION_TYPES); needs only torch")

DESCRIPTIONS = {
    "efficient": "every attention type (standard, local, sparse, featurewise, chunked, flash, wcmha), chosen per "
                 "model: TimeSeriesDecoder(config, attention_type=..., attention_kwargs=..., n_layers=...)",
    "local": "local windowed attention (window_size) in TransformerBlock, besides standard",
    "sparse": "sparse attention (local_window + every stride-th key) in TransformerBlock, besides standard",
    "featurewise": "feature-wise attention (share_weights) in TransformerBlock, besides standard",
    "chunked": "chunked attention (chunk_size, overlap) in TransformerBlock, besides standard",
    "flash": "flash attention (F.scaled_dot_product_attention) in TransformerBlock, besides standard",
    "wcmha": "Powerformer's WCMHA (decay, alpha) in TransformerBlock, besides standard",
}


def _recipe(feature: str, types: Sequence[str]) -> Recipe:
    def edits(options: Mapping[str, Any]) -> List[Edit]:
        return _edits(types)

    return register(Recipe(kind="hephaestus", feature=feature, description=DESCRIPTIONS[feature], edits=edits,
                           templates=TEMPLATES_OF_EVERY_FEATURE, notes=NOTES))


FEATURE_TYPES = {"efficient": EFFICIENT_TYPES, **{t: (t,) for t in EFFICIENT_TYPES}}
RECIPES = [_recipe(feature, types) for feature, types in FEATURE_TYPES.items()]
