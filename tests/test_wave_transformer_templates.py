"""The code the wave_transformer recipes insert, kept in real template files: read by the recipe, run here.

``wave_transformer_templates/wave_transformer_code.py`` and ``transformer_code.py`` hold it as Python (statements as
the bodies of functions, methods of stand-in classes, the PCCA expression as a function's return value). These
tests check that every piece the recipes insert comes from them, and run the pieces on stand-ins of upstream's
objects (the recipe tests run them inside the patched look-alike).
"""

from __future__ import annotations

import math
import types

import pytest
import torch
from torch import nn

from tsattn.injector.codemods import AddMethod, InsertStatements, WrapCall
from tsattn.injector.recipe import get_recipe
from tsattn.injector.recipes import wave_transformer_enhancements as wave
from tsattn.injector.recipes.wave_transformer_templates import transformer_code, wave_transformer_code
from tsattn.injector.templates import template_code
from tsattn.modules.wave_ahs import AdaptiveHarmonicSelector
from tsattn.modules.wave_fcl import FrequencyMask
from tsattn.modules.wcmha import DecayBias

MODEL, BLOCK = wave.MODEL_CODE, wave.BLOCK_CODE


def pieces(path, module):
    """Every piece ``template_code`` can read from a template file: bodies and returns of its functions, and the
    definitions of the methods of its classes."""
    out = set()
    for name, obj in vars(module).items():
        if isinstance(obj, types.FunctionType) and obj.__module__ == module.__name__:
            out.add(template_code(path, name))
            try:
                out.add(template_code(path, name, "return"))
            except ValueError:
                pass
        elif isinstance(obj, type) and obj.__module__ == module.__name__:
            for method in vars(obj):
                if isinstance(vars(obj)[method], types.FunctionType):
                    out.add(template_code(path, f"{name}.{method}", "definition"))
    return out


def run(path, module, name, **names):
    """Run the statements of ``name``'s body as they are inserted, with ``names`` bound; their namespace."""
    namespace = dict(vars(module), **names)
    exec(compile(template_code(path, name), str(path), "exec"), namespace)
    return namespace


class Model(wave_transformer_code.WaveTransformer):
    """A stand-in with the methods the recipes add and the attributes given."""

    def __init__(self, **attributes):
        self.__dict__.update(attributes)


def model(name, **names):
    return run(MODEL, wave_transformer_code, name, **names)


def block(name, **names):
    return run(BLOCK, transformer_code, name, **names)


@pytest.mark.parametrize("feature", ["enhancements", "wcmha"])
def test_every_piece_of_code_the_recipes_insert_comes_from_a_template_file(feature):
    recipe = get_recipe("wave_transformer", feature)
    known = pieces(MODEL, wave_transformer_code) | pieces(BLOCK, transformer_code)
    inserted = {WrapCall: "template", AddMethod: "source", InsertStatements: "statements"}
    edits = [e for e in recipe.edits(recipe.resolve()) if e.codemod in inserted]
    assert len(edits) >= 8
    for edit in edits:
        assert edit.args[inserted[edit.codemod]] in known, edit


def test_template_code_names_the_file_for_a_missing_piece():
    with pytest.raises(ValueError, match="wave_transformer_code.py: no class or def WaveTransformer.nope"):
        template_code(MODEL, "WaveTransformer.nope", "definition")
    with pytest.raises(ValueError, match="init_ahs is not one `return"):
        template_code(MODEL, "init_ahs", "return")


def test_max_seq_len_is_saved_only_when_not_the_default():
    for length, saved in ((512, {}), (128, {"max_seq_len": 128})):
        config = {}
        model("save_max_seq_len", self=types.SimpleNamespace(max_seq_len=length), config=config)
        assert config == saved


def test_ahs_builds_the_selector_only_when_on_and_its_method_returns_stats_only_when_asked():
    self = Model(input_dim=24)
    model("init_ahs", self=self, num_harmonics=8, use_ahs=False, ahs_k_ratio=0.5, ahs_dynamic_k=False,
          ahs_temperature=1.0)
    assert self.ahs is None and self.use_ahs is False
    x = torch.randn(2, 5, 24)
    select = wave_transformer_code.WaveTransformer.harmonic_selection
    assert select(self, x) == (x, None)
    with pytest.raises(ValueError, match="use_ahs=True"):
        select(self, x, return_stats=True)
    model("init_ahs", self=self, num_harmonics=8, use_ahs=True, ahs_k_ratio=0.25, ahs_dynamic_k=False,
          ahs_temperature=1.0)
    assert isinstance(self.ahs, AdaptiveHarmonicSelector) and self.ahs_k_ratio == 0.25
    out, stats = select(self, x, return_stats=True)
    assert out.shape == x.shape and stats is not None
    assert select(self, x)[1] is None
    assert model("forward_ahs", self=self, x=x, return_ahs_stats=True)["ahs_stats"] is not None
    config = {}
    model("save_ahs", self=self, config=config)
    assert config == dict(use_ahs=True, ahs_k_ratio=0.25, ahs_dynamic_k=False, ahs_temperature=1.0)
    assert wave_transformer_code.forward_ahs_stats(1, 2, 3, False, False) is None
    assert wave_transformer_code.forward_ahs_stats(1, 2, 3, True, False) == (1, 3)
    assert wave_transformer_code.forward_ahs_stats(1, 2, 3, True, True) == (1, 2, 3)


def test_fcl_masks_while_training_only():
    self = Model(training=True)
    model("init_fcl", self=self, num_harmonics=4, use_fcl=False, fcl_mask_slope=10.0)
    curriculum = wave_transformer_code.WaveTransformer.frequency_curriculum
    x = torch.ones(1, 3, 12)
    assert curriculum(self, x) is x
    with pytest.raises(ValueError, match="use_fcl=True"):
        curriculum(self, x, 0.5)
    model("init_fcl", self=self, num_harmonics=4, use_fcl=True, fcl_mask_slope=10.0)
    assert isinstance(self.freq_mask, FrequencyMask)
    assert torch.equal(curriculum(self, x, 0.5), self.freq_mask(x, 0.5)) and not torch.equal(self.freq_mask(x, 0.5), x)
    self.training = False
    assert curriculum(self, x, 0.5) is x
    assert model("forward_fcl", self=self, x=x, freq_limit=0.5)["x"] is x


def test_mrwp_checks_its_interval_and_runs_every_interval_blocks():
    args = dict(num_harmonics=8, use_mrwp=True, mrwp_band_boundaries=(0.2, 0.6), mrwp_band_num_layers=None,
                mrwp_cross_band=True, transformer_num_layers=4, transformer_num_heads=2, transformer_heads_kv=1,
                transformer_d_ff_multi=2, dropout=0.0, use_flash=False)
    for bad in (0, 5, 1.5):
        with pytest.raises(ValueError, match="pyramid_interval"):
            model("init_mrwp", self=types.SimpleNamespace(), pyramid_interval=bad, **args)
    self = types.SimpleNamespace()
    model("init_mrwp", self=self, pyramid_interval=2, **args)
    assert self.pyramid is not None and self.mrwp_band_boundaries == [0.2, 0.6]
    calls = []
    self.pyramid = lambda x, causal, attention_mask: calls.append(x) or x + 1
    for i in range(4):
        model("forward_mrwp", self=self, x=i, i=i, causal=True, attention_mask=None)
    assert calls == [1, 3]


@pytest.mark.parametrize("feature, flag", [("pcca", "use_pcca"), ("wcmha", "use_wcmha"), ("fcl", "use_fcl")])
def test_save_writes_a_features_options_only_when_its_flag_is_on(feature, flag):
    for on in (False, True):
        self = types.SimpleNamespace(**{flag: on}, pcca_mode="cosine", pcca_phase_temp=1.0, wcmha_decay="step",
                                     wcmha_alpha=2.0, wcmha_cutoff=None, fcl_mask_slope=3.0)
        config = {}
        model(f"save_{feature}", self=self, config=config)
        assert bool(config) is on and config.get(flag, on) is on


def test_pcca_expression_builds_phase_coherent_attention():
    attn = transformer_code.pcca_attention(24, None, 2, 1, 0.0, False, False, "cosine", 1.0, None, 1.0, None,
                                           True, None)
    assert isinstance(attn, transformer_code.PhaseCoherentAttention)


def test_decay_is_refused_with_flash_and_adds_powerlaw_bias_to_the_scores():
    self = types.SimpleNamespace()
    with pytest.raises(ValueError, match="use_flash=False"):
        block("init_decay", self=self, decay="powerlaw", decay_alpha=0.5, n_heads_q=2, decay_cutoff=None, use_flash=True)
    block("init_decay", self=self, decay=None, decay_alpha=0.5, n_heads_q=2, decay_cutoff=None, use_flash=True)
    assert self.decay_bias is None
    block("init_decay", self=self, decay="powerlaw", decay_alpha=0.5, n_heads_q=2, decay_cutoff=None, use_flash=False)
    assert isinstance(self.decay_bias, DecayBias)
    n = 5
    scores = block("decay_scores", self=self, scores=torch.zeros(1, 2, n, n), N=n, causal=True)["scores"]
    for i in range(n):
        for j in range(n):
            want = -0.5 * math.log(i - j + 1) if j <= i else -math.inf
            assert scores[0, 1, i, j].item() == pytest.approx(want, abs=1e-6)
    attn = torch.softmax(scores, dim=-1)
    scores[0, 0, 2] = -math.inf  # a row with no key left
    attn = block("decay_empty_rows", self=self, attn=torch.softmax(scores, dim=-1), scores=scores)["attn"]
    assert torch.equal(attn[0, 0, 2], torch.zeros(n)) and not torch.isnan(attn).any()


def test_a_checkpoint_without_the_decay_loads_and_keeps_the_configured_one():
    class Attention(transformer_code.MultiQueryFlashAttention):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(3, 3)
            self.decay_bias = DecayBias("powerlaw", 0.7, 2, learnable_alpha=True)

    attn = Attention()
    before = {k: v.clone() for k, v in attn.decay_bias.state_dict().items()}
    plain = nn.Linear(3, 3)
    attn.load_state_dict({"proj." + k: v for k, v in plain.state_dict().items()})  # strict: nothing missing
    assert torch.equal(attn.proj.weight, plain.weight)
    assert all(torch.equal(v, before[k]) for k, v in attn.decay_bias.state_dict().items())
