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
from tsattn.injector.templates import MODULES, Template, template_constant

TEMPLATES = Path(__file__).resolve().parent / "wave_transformer_templates"
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
MAX_SEQ_LEN_INIT = "self.max_seq_len = max_seq_len\n"
MAX_SEQ_LEN_SAVE = ("if self.max_seq_len != 512:  # (tsattn-inject) upstream's save() omits it; load() needs it\n"
                    "    config['max_seq_len'] = self.max_seq_len\n")


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

AHS_INIT = """\
# Adaptive Harmonic Sparsification (tsattn-inject): keep the most important harmonics at each position
self.use_ahs = use_ahs
self.ahs_k_ratio = ahs_k_ratio
self.ahs_dynamic_k = ahs_dynamic_k
self.ahs_temperature = ahs_temperature
self.ahs = (AdaptiveHarmonicSelector(num_harmonics, self.input_dim, k_ratio=ahs_k_ratio,
                                     temperature=ahs_temperature, use_dynamic_k=ahs_dynamic_k)
            if use_ahs else None)
"""

AHS_METHOD = '''
def harmonic_selection(self, x, return_stats=False):
    """(tsattn-inject) AHS on the wave representation x (B, S, 3H): (x, stats), stats None unless asked."""
    # Without use_ahs, x is returned as it is.
    if self.ahs is None:
        if return_stats:
            raise ValueError("return_ahs_stats=True needs a model built with use_ahs=True")
        return x, None
    if return_stats:
        return self.ahs(x, return_stats=True)
    return self.ahs(x), None
'''

FCL_STATEMENT = "x = self.frequency_curriculum(x, freq_limit)\n"


def _ahs(o: Mapping[str, Any]) -> List[Edit]:
    return [
        Edit(MODEL, AddImport, module=f"{IMPORTS}.wave_ahs", names=["AdaptiveHarmonicSelector"]),
        *_params(INIT, [("use_ahs", False), ("ahs_k_ratio", float(o["k_ratio"])), ("ahs_dynamic_k", False),
                        ("ahs_temperature", 1.0)]),
        _in_order("ahs", INIT, INIT_ANCHOR, MAX_SEQ_LEN_INIT, INIT_BLOCKS),
        *_params(FORWARD, [("return_ahs_stats", False)]),
        # after FCL's mask when that is there, whichever was injected first
        Edit(MODEL, InsertStatements, scope=FORWARD, after=[REPRESENTATION, FCL_STATEMENT],
             statements="x, ahs_stats = self.harmonic_selection(x, return_ahs_stats)\n"),
        Edit(MODEL, InsertStatements, scope=FORWARD, after=DECODER_CALL, statements=(
            "if return_ahs_stats:\n"
            "    return (output, wave, ahs_stats) if return_encoder_outputs else (output, ahs_stats)\n")),
        Edit(MODEL, AddMethod, class_name="WaveTransformer", source=AHS_METHOD, after="forward"),
        _in_order("ahs", SAVE, SAVE_ANCHOR, MAX_SEQ_LEN_SAVE, SAVE_BLOCKS),
    ]


# --- FCL -----------------------------------------------------------------------------------------------------------

FCL_INIT = """\
# Frequency Curriculum Learning (tsattn-inject): mask the harmonics above forward's freq_limit while training
self.use_fcl = use_fcl
self.fcl_mask_slope = fcl_mask_slope
self.freq_mask = FrequencyMask(num_harmonics, mask_slope=fcl_mask_slope) if use_fcl else None
"""

FCL_METHOD = '''
def frequency_curriculum(self, x, freq_limit=None):
    """(tsattn-inject) FCL on the wave representation x (B, S, 3H), while training."""
    # The harmonics above freq_limit (a fraction of the spectrum, e.g. from
    # FrequencyCurriculumScheduler.get_freq_limit(step)) are rolled off; in eval, or without freq_limit, x is
    # returned as it is.
    if freq_limit is None:
        return x
    if self.freq_mask is None:
        raise ValueError("freq_limit needs a model built with use_fcl=True")
    return self.freq_mask(x, freq_limit) if self.training else x
'''


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

# Continuation lines are relative to the statement's indentation (libcst adds it).
PCCA_ATTENTION = """(
    PhaseCoherentAttention(d_model, num_harmonics or d_model // 3, n_heads_q=num_heads_q, n_heads_kv=num_heads_kv,
                           dropout_p=dropout, use_yarn=use_yarn, use_flash=use_flash,
                           phase_coherence_mode=pcca_mode, phase_temp=pcca_phase_temp,
                           decay=decay or "none", decay_alpha=decay_alpha, cutoff=decay_cutoff)
    if use_pcca
    else {call}
)"""

PCCA_LOAD = '''
def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
    # (tsattn-inject) Weights of the standard attention load into PhaseCoherentAttention: kv_proj is split into
    # k_proj and v_proj, the rotary tables are dropped (PCCA computes the same rotation) and PCCA's own state
    # (blend alpha and beta, decay) keeps its configured values. With beta = 0 the block then computes what it
    # computed before.
    attn = prefix + "attn."
    if isinstance(self.attn, PhaseCoherentAttention) and attn + "kv_proj.weight" in state_dict:
        key, value = state_dict.pop(attn + "kv_proj.weight").chunk(2, dim=0)
        state_dict.setdefault(attn + "k_proj.weight", key)
        state_dict.setdefault(attn + "v_proj.weight", value)
        for name in [k for k in state_dict if k.startswith(attn + "yarn_rope.")]:
            del state_dict[name]
        for name, tensor in self.attn.state_dict().items():
            if not name.endswith("_proj.weight"):
                state_dict.setdefault(attn + name, tensor)
    super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
'''

PCCA_INIT = """\
# Phase-Coherent Attention (tsattn-inject) in the blocks instead of MultiQueryFlashAttention
self.use_pcca = use_pcca
self.pcca_mode = pcca_mode
self.pcca_phase_temp = pcca_phase_temp
"""


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

DECAY_INIT = """\
# WCMHA decay bias (tsattn-inject): added to the scores of the manual path
self.decay_bias = None
if decay is not None:
    if use_flash:
        raise ValueError("decay (WCMHA) needs use_flash=False: flash_attn takes no attention bias")
    self.decay_bias = DecayBias(decay, decay_alpha, n_heads_q, cutoff=decay_cutoff)
"""

DECAY_SCORES = """\
if self.decay_bias is not None:  # (tsattn-inject) WCMHA: bias(i - j), causal masking kept below
    pos = torch.arange(N, device=scores.device, dtype=torch.promote_types(scores.dtype, torch.float32))
    dt = pos[:, None] - pos[None, :]
    scores = scores + self.decay_bias(dt if causal else dt.abs()).to(scores.dtype)
"""

# A padded query whose window (step, butterworth, cutoff) holds only padded keys has no key left: its row would be
# NaN, and the next layer's 0 * NaN would spread it to every position; it attends to nothing instead.
DECAY_EMPTY_ROWS = """\
if self.decay_bias is not None:  # (tsattn-inject) rows the decay window and the padding mask both emptied
    attn = attn.masked_fill(torch.isneginf(scores).all(dim=-1, keepdim=True), 0.0)
"""

DECAY_LOAD = '''
def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
    # (tsattn-inject) A checkpoint saved without the WCMHA decay keeps the configured one.
    if self.decay_bias is not None:
        for name, tensor in self.decay_bias.state_dict().items():
            state_dict.setdefault(prefix + "decay_bias." + name, tensor)
    super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
'''

WCMHA_INIT = """\
# WCMHA (tsattn-inject): Powerformer's decay bias in the blocks' attention
self.use_wcmha = use_wcmha
self.wcmha_decay = wcmha_decay
self.wcmha_alpha = wcmha_alpha
self.wcmha_cutoff = wcmha_cutoff
"""


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

MRWP_INIT = """\
# Multi-Resolution Wave Pyramid (tsattn-inject): one pyramid, run after every pyramid_interval-th block
self.use_mrwp = use_mrwp
self.pyramid_interval = pyramid_interval
self.mrwp_band_boundaries = list(mrwp_band_boundaries)
self.mrwp_band_num_layers = None if mrwp_band_num_layers is None else list(mrwp_band_num_layers)
self.mrwp_cross_band = mrwp_cross_band
self.pyramid = None
if use_mrwp:
    if int(pyramid_interval) != pyramid_interval or not 1 <= pyramid_interval <= transformer_num_layers:
        raise ValueError(f"pyramid_interval must be an integer in [1, transformer_num_layers="
                         f"{transformer_num_layers}]; got {pyramid_interval!r}")
    self.pyramid = MultiResolutionWavePyramid(
        num_harmonics, band_boundaries=self.mrwp_band_boundaries, band_num_layers=self.mrwp_band_num_layers,
        n_heads_q=transformer_num_heads, n_heads_kv=transformer_heads_kv, d_ff_multi=transformer_d_ff_multi,
        dropout=dropout, use_cross_band_attn=mrwp_cross_band, use_flash=use_flash)
"""


def _mrwp(o: Mapping[str, Any]) -> List[Edit]:
    return [
        Edit(MODEL, AddImport, module=f"{IMPORTS}.wave_mrwp", names=["MultiResolutionWavePyramid"]),
        *_params(INIT, [("use_mrwp", False), ("pyramid_interval", int(o["pyramid_interval"])),
                        ("mrwp_band_boundaries", (0.2, 0.6)), ("mrwp_band_num_layers", None),
                        ("mrwp_cross_band", True)]),
        _in_order("mrwp", INIT, INIT_ANCHOR, MAX_SEQ_LEN_INIT, INIT_BLOCKS),
        Edit(MODEL, InsertStatements, scope=FORWARD, after=BLOCK_CALL, statements=(
            "if self.pyramid is not None and (i + 1) % self.pyramid_interval == 0:\n"
            "    x = self.pyramid(x, causal=causal, attention_mask=attention_mask)\n")),
        _in_order("mrwp", SAVE, SAVE_ANCHOR, MAX_SEQ_LEN_SAVE, SAVE_BLOCKS),
    ]


# The statements each feature adds to __init__ and save(), by feature (for their order).
INIT_BLOCKS = {"ahs": AHS_INIT, "fcl": FCL_INIT, "pcca": PCCA_INIT, "mrwp": MRWP_INIT, "wcmha": WCMHA_INIT}
SAVE_BLOCKS = {
    "ahs": ("if self.use_ahs:\n"
            "    config.update(use_ahs=True, ahs_k_ratio=self.ahs_k_ratio, ahs_dynamic_k=self.ahs_dynamic_k,\n"
            "                  ahs_temperature=self.ahs_temperature)\n"),
    "fcl": ("if self.use_fcl:\n"
            "    config.update(use_fcl=True, fcl_mask_slope=self.fcl_mask_slope)\n"),
    "pcca": ("if self.use_pcca:\n"
             "    config.update(use_pcca=True, pcca_mode=self.pcca_mode, pcca_phase_temp=self.pcca_phase_temp)\n"),
    "mrwp": ("if self.use_mrwp:\n"
             "    config.update(use_mrwp=True, pyramid_interval=self.pyramid_interval,\n"
             "                  mrwp_band_boundaries=self.mrwp_band_boundaries,\n"
             "                  mrwp_band_num_layers=self.mrwp_band_num_layers, mrwp_cross_band=self.mrwp_cross_band)\n"),
    "wcmha": ("if self.use_wcmha:\n"
              "    config.update(use_wcmha=True, wcmha_decay=self.wcmha_decay, wcmha_alpha=self.wcmha_alpha,\n"
              "                  wcmha_cutoff=self.wcmha_cutoff)\n"),
}


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
