"""Wave-Transformer: seed 001's four enhancements (AHS, FCL, PCCA, MRWP) and the WCMHA decay, wired into
``WaveTransformer`` as opt-in flags.

Upstream ``Maximilian-Winter/Wave-Transformer`` (tried at b33e609 and HEAD 333a36f) builds
``WaveTransformer`` in ``src/wave_transformer/core/wave_transformer.py`` from ``TransformerParallelBlock``s, each
with a ``MultiQueryFlashAttention``, in ``core/transformer.py``. Features:

    ahs           AdaptiveHarmonicSelector on the wave representation before the blocks; its stats on request
    fcl           FrequencyMask with a per-call ``freq_limit``, applied while training only
    pcca          PhaseCoherentAttention instead of MultiQueryFlashAttention in the blocks
    mrwp          one MultiResolutionWavePyramid, run after every ``pyramid_interval``-th block
    enhancements  all four
    wcmha         the WCMHA decay bias added to the scores of the blocks' attention (its manual path)

Every feature:

- installs the templates it needs (``tsattn/modules/wave_*.py``, ``wcmha.py``, verbatim) into a package of its
  own, ``src/wave_transformer/tsattn_modules/``, which cannot collide with upstream's ``enhancements/`` package
  (same class names; both stay importable), and imports them absolutely (``from
  wave_transformer.tsattn_modules.wave_pcca import ...``, as upstream's own modules import the package);
- adds keyword arguments to ``WaveTransformer.__init__`` (``use_ahs=False``, ... : every flag off by default, so
  an unchanged call builds the same modules, draws the same random numbers and computes the same outputs),
  stores them, and has ``save()`` write a feature's options only when its flag is on (flags off: the config
  file is upstream's, byte for byte); ``load()`` passes them back (``cls(**config)``); ``save()`` also writes
  ``max_seq_len`` when it is not 512 (upstream omits it, so ``load()`` failed on other lengths);
- inserts code kept in real template files, read as text (``wave_transformer_templates/wave_transformer_code.py``
  and ``transformer_code.py``: statements as the bodies of functions, methods of stand-in classes);
- edits only by anchors that upstream's b33e609 and HEAD share (HEAD's ``transformer.py`` differs in its import
  block, the block's norm and the order of the attention's keywords); the target is never imported.

Composition: features may be injected one after another (commit in between) in any order with the same result:
the statements that must come in order (FCL's mask before AHS's selection) are anchored so (``InsertStatements``
with a list of anchors), and ``pcca`` and ``wcmha`` add the same decay arguments to the block (PCCA takes the
decay itself; ``MultiQueryFlashAttention`` once ``wcmha`` is injected).

Options (``tsattn-inject`` flags) set the defaults of the injected keyword arguments, not the flags:
``--k_ratio`` (``ahs_k_ratio``), ``--mask_slope`` (``fcl_mask_slope``), ``--pcca_mode`` (``pcca_mode``),
``--pyramid_interval`` and, for wcmha, ``--decay`` / ``--alpha`` (``wcmha_decay`` / ``wcmha_alpha``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import libcst as cst

from tsattn.injector.codemods import AddImport, AddMethod, Code, InsertStatements, SetKeyword, SetParameterDefault, WrapCall
from tsattn.injector.errors import UsageError
from tsattn.injector.recipe import Edit, Option, Recipe, register
from tsattn.injector.recipes.calf_wcmha import validate as validate_decay
from tsattn.injector.templates import MODULES, Template, template_code, template_constant

TEMPLATES = Path(__file__).resolve().parent / "wave_transformer_templates"
# The code the codemods insert (statements, methods, the PCCA expression) lives in real template files, imported
# and tested in tsattn (tests/test_wave_transformer_templates.py) and read here as text with template_code.
MODEL_CODE = TEMPLATES / "wave_transformer_code.py"  # what is inserted into core/wave_transformer.py
BLOCK_CODE = TEMPLATES / "transformer_code.py"  # ... into core/transformer.py
DECAY_TYPES = tuple(template_constant(MODULES / "wcmha.py", "DECAY_TYPES"))
COHERENCE_MODES = tuple(template_constant(MODULES / "wave_pcca.py", "COHERENCE_MODES"))

CORE = "src/wave_transformer/core"
TRANSFORMER = f"{CORE}/transformer.py"
MODEL = f"{CORE}/wave_transformer.py"
PACKAGE = "src/wave_transformer/tsattn_modules"  # where the templates go
IMPORTS = "wave_transformer.tsattn_modules"  # ... as the target's code imports them

# --- anchors (statements both b33e609 and HEAD have) ------------------------------------------------------------

INIT = "WaveTransformer.__init__"
FORWARD = "WaveTransformer.forward"
SAVE = "WaveTransformer.save"
INIT_ANCHOR = "self.use_flash = use_flash"
REPRESENTATION = "x = wave.to_representation()"
BLOCK_CALL = "x = block(x, causal=causal, attention_mask=attention_mask)"
DECODER_CALL = "output = self.wave_decoder(x, attention_mask=attention_mask)"
SAVE_ANCHOR = "checkpoint = {'transformer_state_dict': self.state_dict()}"
SCORES = "scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale"
SOFTMAX = "attn = F.softmax(scores, dim=-1)"

# --- shared by every feature: the package, and max_seq_len saved ---------------------------------------------------

COMMON_TEMPLATES = (Template(TEMPLATES / "tsattn_modules_init.py", f"{PACKAGE}/__init__.py"),)
MAX_SEQ_LEN_INIT = template_code(MODEL_CODE, "init_max_seq_len")
MAX_SEQ_LEN_SAVE = template_code(MODEL_CODE, "save_max_seq_len")


def _common() -> List[Edit]:
    return [
        Edit(MODEL, InsertStatements, scope=INIT, after=INIT_ANCHOR, statements=MAX_SEQ_LEN_INIT),
        Edit(MODEL, InsertStatements, scope=SAVE, after=SAVE_ANCHOR, statements=MAX_SEQ_LEN_SAVE),
    ]


def _last_statement(snippet: str) -> str:
    return cst.Module(body=[cst.parse_module(snippet).body[-1]]).code


def _in_order(feature: str, scope: str, anchor: str, common: str, blocks: Mapping[str, str]) -> Edit:
    """Insert ``blocks[feature]`` after ``anchor`` and after what the other features inserted there, so that the
    blocks stand in the order they were injected (the order of ``FEATURES`` for ``enhancements``)."""
    after = [anchor, _last_statement(common)] + [_last_statement(b) for f, b in blocks.items() if f != feature]
    return Edit(MODEL, InsertStatements, scope=scope, after=after, statements=blocks[feature])


def _params(function: str, values: Sequence[Tuple[str, Any]], path: str = MODEL) -> List[Edit]:
    return [Edit(path, SetParameterDefault, function=function, param=name, value=value) for name, value in values]


def _keywords(callee: str, scope: str, names: Sequence[Tuple[str, str]], path: str) -> List[Edit]:
    return [Edit(path, SetKeyword, callee=callee, keyword=k, value=Code(v), scope=scope) for k, v in names]


# --- AHS -----------------------------------------------------------------------------------------------------------

AHS_INIT = template_code(MODEL_CODE, "init_ahs")

AHS_METHOD = template_code(MODEL_CODE, "WaveTransformer.harmonic_selection", "definition")

FCL_STATEMENT = template_code(MODEL_CODE, "forward_fcl")


def _ahs(o: Mapping[str, Any]) -> List[Edit]:
    return [
        Edit(MODEL, AddImport, module=f"{IMPORTS}.wave_ahs", names=["AdaptiveHarmonicSelector"]),
        *_params(INIT, [("use_ahs", False), ("ahs_k_ratio", float(o["k_ratio"])), ("ahs_dynamic_k", False),
                        ("ahs_temperature", 1.0)]),
        _in_order("ahs", INIT, INIT_ANCHOR, MAX_SEQ_LEN_INIT, INIT_BLOCKS),
        *_params(FORWARD, [("return_ahs_stats", False)]),
        # after FCL's mask when that is there, whichever was injected first
        Edit(MODEL, InsertStatements, scope=FORWARD, after=[REPRESENTATION, FCL_STATEMENT],
             statements=template_code(MODEL_CODE, "forward_ahs")),
        Edit(MODEL, InsertStatements, scope=FORWARD, after=DECODER_CALL,
             statements=template_code(MODEL_CODE, "forward_ahs_stats")),
        Edit(MODEL, AddMethod, class_name="WaveTransformer", source=AHS_METHOD, after="forward"),
        _in_order("ahs", SAVE, SAVE_ANCHOR, MAX_SEQ_LEN_SAVE, SAVE_BLOCKS),
    ]


# --- FCL -----------------------------------------------------------------------------------------------------------

FCL_INIT = template_code(MODEL_CODE, "init_fcl")

FCL_METHOD = template_code(MODEL_CODE, "WaveTransformer.frequency_curriculum", "definition")


def _fcl(o: Mapping[str, Any]) -> List[Edit]:
    return [
        Edit(MODEL, AddImport, module=f"{IMPORTS}.wave_fcl", names=["FrequencyMask"]),
        *_params(INIT, [("use_fcl", False), ("fcl_mask_slope", float(o["mask_slope"]))]),
        _in_order("fcl", INIT, INIT_ANCHOR, MAX_SEQ_LEN_INIT, INIT_BLOCKS),
        *_params(FORWARD, [("freq_limit", None)]),
        Edit(MODEL, InsertStatements, scope=FORWARD, after=REPRESENTATION, statements=FCL_STATEMENT),
        Edit(MODEL, AddMethod, class_name="WaveTransformer", source=FCL_METHOD, after="forward"),
        _in_order("fcl", SAVE, SAVE_ANCHOR, MAX_SEQ_LEN_SAVE, SAVE_BLOCKS),
    ]


# --- the block's attention: PCCA and WCMHA ---------------------------------------------------------------------------

BLOCK_INIT = "TransformerParallelBlock.__init__"
BLOCK_DECAY = [("decay", None), ("decay_alpha", 1.0), ("decay_cutoff", None)]  # pcca and wcmha add them alike

PCCA_ATTENTION = template_code(BLOCK_CODE, "pcca_attention", "return")

PCCA_LOAD = template_code(BLOCK_CODE, "TransformerParallelBlock._load_from_state_dict", "definition")

PCCA_INIT = template_code(MODEL_CODE, "init_pcca")


def _pcca(o: Mapping[str, Any]) -> List[Edit]:
    mode = o["pcca_mode"]
    return [
        Edit(TRANSFORMER, AddImport, module=f"{IMPORTS}.wave_pcca", names=["PhaseCoherentAttention"]),
        *_params(BLOCK_INIT, [("num_harmonics", None), ("use_pcca", False), ("pcca_mode", mode),
                              ("pcca_phase_temp", 1.0), *BLOCK_DECAY], TRANSFORMER),
        Edit(TRANSFORMER, WrapCall, scope=BLOCK_INIT, target="self.attn", callee="MultiQueryFlashAttention",
             template=PCCA_ATTENTION),
        Edit(TRANSFORMER, AddMethod, class_name="TransformerParallelBlock", source=PCCA_LOAD, after="__init__"),
        *_params(INIT, [("use_pcca", False), ("pcca_mode", mode), ("pcca_phase_temp", 1.0)]),
        _in_order("pcca", INIT, INIT_ANCHOR, MAX_SEQ_LEN_INIT, INIT_BLOCKS),
        *_keywords("TransformerParallelBlock", INIT, [("num_harmonics", "num_harmonics"), ("use_pcca", "use_pcca"),
                                                      ("pcca_mode", "pcca_mode"), ("pcca_phase_temp", "pcca_phase_temp")], MODEL),
        _in_order("pcca", SAVE, SAVE_ANCHOR, MAX_SEQ_LEN_SAVE, SAVE_BLOCKS),
    ]


ATTENTION_INIT = "MultiQueryFlashAttention.__init__"

DECAY_INIT = template_code(BLOCK_CODE, "init_decay")

DECAY_SCORES = template_code(BLOCK_CODE, "decay_scores")

DECAY_EMPTY_ROWS = template_code(BLOCK_CODE, "decay_empty_rows")

DECAY_LOAD = template_code(BLOCK_CODE, "MultiQueryFlashAttention._load_from_state_dict", "definition")

WCMHA_INIT = template_code(MODEL_CODE, "init_wcmha")


def _wcmha(o: Mapping[str, Any]) -> List[Edit]:
    return [
        Edit(TRANSFORMER, AddImport, module=f"{IMPORTS}.wcmha", names=["DecayBias"]),
        *_params(ATTENTION_INIT, BLOCK_DECAY, TRANSFORMER),
        Edit(TRANSFORMER, InsertStatements, scope=ATTENTION_INIT, after="self.use_yarn = use_yarn", statements=DECAY_INIT),
        Edit(TRANSFORMER, InsertStatements, scope="MultiQueryFlashAttention.forward", after=SCORES,
             statements=DECAY_SCORES),
        Edit(TRANSFORMER, InsertStatements, scope="MultiQueryFlashAttention.forward", after=SOFTMAX,
             statements=DECAY_EMPTY_ROWS),
        Edit(TRANSFORMER, AddMethod, class_name="MultiQueryFlashAttention", source=DECAY_LOAD, after="__init__"),
        *_params(BLOCK_INIT, BLOCK_DECAY, TRANSFORMER),
        *_keywords("MultiQueryFlashAttention", BLOCK_INIT, [("decay", "decay"), ("decay_alpha", "decay_alpha"),
                                                           ("decay_cutoff", "decay_cutoff")], TRANSFORMER),
        *_params(INIT, [("use_wcmha", False), ("wcmha_decay", o["decay"]), ("wcmha_alpha", float(o["alpha"])),
                        ("wcmha_cutoff", None)]),
        _in_order("wcmha", INIT, INIT_ANCHOR, MAX_SEQ_LEN_INIT, INIT_BLOCKS),
        *_keywords("TransformerParallelBlock", INIT, [("decay", "wcmha_decay if use_wcmha else None"),
                                                      ("decay_alpha", "wcmha_alpha"), ("decay_cutoff", "wcmha_cutoff")], MODEL),
        _in_order("wcmha", SAVE, SAVE_ANCHOR, MAX_SEQ_LEN_SAVE, SAVE_BLOCKS),
    ]


# --- MRWP ----------------------------------------------------------------------------------------------------------

MRWP_INIT = template_code(MODEL_CODE, "init_mrwp")


def _mrwp(o: Mapping[str, Any]) -> List[Edit]:
    return [
        Edit(MODEL, AddImport, module=f"{IMPORTS}.wave_mrwp", names=["MultiResolutionWavePyramid"]),
        *_params(INIT, [("use_mrwp", False), ("pyramid_interval", int(o["pyramid_interval"])),
                        ("mrwp_band_boundaries", (0.2, 0.6)), ("mrwp_band_num_layers", None),
                        ("mrwp_cross_band", True)]),
        _in_order("mrwp", INIT, INIT_ANCHOR, MAX_SEQ_LEN_INIT, INIT_BLOCKS),
        Edit(MODEL, InsertStatements, scope=FORWARD, after=BLOCK_CALL, statements=template_code(MODEL_CODE, "forward_mrwp")),
        _in_order("mrwp", SAVE, SAVE_ANCHOR, MAX_SEQ_LEN_SAVE, SAVE_BLOCKS),
    ]


# The statements each feature adds to __init__ and save(), by feature (for their order).
INIT_BLOCKS = {"ahs": AHS_INIT, "fcl": FCL_INIT, "pcca": PCCA_INIT, "mrwp": MRWP_INIT, "wcmha": WCMHA_INIT}
SAVE_BLOCKS = {feature: template_code(MODEL_CODE, f"save_{feature}") for feature in ("ahs", "fcl", "pcca", "mrwp", "wcmha")}


# --- recipes -------------------------------------------------------------------------------------------------------

OPTIONS = {
    "k_ratio": Option("k_ratio", float, 0.5, "AHS: fraction of the harmonics kept per position (in (0, 1])"),
    "mask_slope": Option("mask_slope", float, 10.0, "FCL: inverse width of the frequency mask's roll-off (> 0)"),
    "pcca_mode": Option("pcca_mode", str, "cosine", "PCCA: phase coherence measure", choices=COHERENCE_MODES),
    "pyramid_interval": Option("pyramid_interval", int, 3, "MRWP: run the pyramid after every N-th block (>= 1)"),
    "decay": Option("decay", str, "powerlaw", "decay type", choices=DECAY_TYPES),
    "alpha": Option("alpha", float, 1.0, "decay scale (powerlaw: -alpha*log(dt+1); 0 = plain causal attention)"),
}


def _validate(options: Mapping[str, Any]) -> None:
    """Option ranges, checked before any edit (the templates would raise only when the model is built)."""
    if "k_ratio" in options and not 0.0 < options["k_ratio"] <= 1.0:
        raise UsageError(f"--k_ratio {options['k_ratio']}: must be in (0, 1]")
    if "mask_slope" in options and not (math.isfinite(options["mask_slope"]) and options["mask_slope"] > 0):
        raise UsageError(f"--mask_slope {options['mask_slope']}: must be a finite number > 0")
    if "pyramid_interval" in options and options["pyramid_interval"] < 1:
        raise UsageError(f"--pyramid_interval {options['pyramid_interval']}: must be >= 1")
    if "decay" in options:
        validate_decay(options)


FEATURES: Dict[str, Tuple[Any, Tuple[str, ...], Tuple[str, ...], str]] = {
    # feature: (edits, templates, options, description)
    "ahs": (_ahs, ("wave_ahs.py",), ("k_ratio",),
            "AHS: WaveTransformer(use_ahs=True) keeps the top harmonics per position; stats with return_ahs_stats"),
    "fcl": (_fcl, ("wave_fcl.py",), ("mask_slope",),
            "FCL: WaveTransformer(use_fcl=True); forward(freq_limit=...) masks high harmonics while training"),
    "pcca": (_pcca, ("wave_pcca.py",), ("pcca_mode",),
             "PCCA: WaveTransformer(use_pcca=True) puts PhaseCoherentAttention in the blocks"),
    "mrwp": (_mrwp, ("wave_mrwp.py",), ("pyramid_interval",),
             "MRWP: WaveTransformer(use_mrwp=True) runs a wave pyramid after every pyramid_interval-th block"),
    "wcmha": (_wcmha, ("wcmha.py",), ("alpha", "decay"),
              "WCMHA decay bias in the blocks' attention: WaveTransformer(use_wcmha=True, wcmha_alpha=...)"),
}
ENHANCEMENTS = ("ahs", "fcl", "pcca", "mrwp")

NOTES = ("flags off by default (outputs, state_dict keys and saved config unchanged); only torch needed; "
         "use_flash=False without flash_attn; upstream HEAD: delete core/transformer.py's six unused "
         "`from memory... import` lines first")


def _recipe(feature: str, parts: Sequence[str], description: str) -> Recipe:
    option_names = [n for part in parts for n in FEATURES[part][2]]

    def edits(options: Mapping[str, Any]) -> List[Edit]:
        out = _common()
        for part in parts:
            out += FEATURES[part][0](options)
        return out

    templates = COMMON_TEMPLATES + tuple(
        Template(MODULES / name, f"{PACKAGE}/{name}") for part in parts for name in FEATURES[part][1])
    return register(Recipe(
        kind="wave_transformer", feature=feature, description=description, edits=edits, templates=templates,
        options=tuple(OPTIONS[n] for n in option_names), validate=_validate, notes=NOTES,
    ))


RECIPES = [_recipe(f, (f,), FEATURES[f][3]) for f in FEATURES] + [
    _recipe("enhancements", ENHANCEMENTS, "AHS + FCL + PCCA + MRWP, each an opt-in WaveTransformer flag (use_ahs, "
                                          "use_fcl, use_pcca, use_mrwp)"),
]
