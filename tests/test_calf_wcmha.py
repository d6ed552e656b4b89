"""The CALF wcmha recipe's model: invariants on the look-alike, and PowerformerGPT2 against transformers' GPT-2."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import types
import warnings

import peft
import pytest
import torch
from transformers import GPT2Config, GPT2Model

from reference import reference_bias
from repo_checks import third_party_imports
from tsattn.examples import TINY_GPT2, import_from, lookalike_repo, offline_gpt2
from tsattn.injector import engine
from tsattn.injector.recipes.calf_templates.PowerformerGPT2 import PowerformerGPT2Model

warnings.filterwarnings("ignore", message=".*sdpa.*")


def configs(**kw):
    base = dict(pred_len=6, seq_len=12, d_model=TINY_GPT2["n_embd"], r=4, lora_alpha=8, lora_dropout=0.0, gpt_layers=2)
    return types.SimpleNamespace(**{**base, **kw})


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("calf")
    base = lookalike_repo("calf_lookalike", root / "base")
    patched = lookalike_repo("calf_lookalike", root / "patched")
    engine.inject(patched, "wcmha", patch_out=root / "p.patch")
    unpatched_module = import_from(base, "models.CALF")
    unpatched_module.get_peft_model = peft.get_peft_model  # like upstream, the look-alike never imports it
    return types.SimpleNamespace(base=base, patched=patched, U=unpatched_module, P=import_from(patched, "models.CALF"))


def build(module, cfg, seed=1):
    with offline_gpt2():
        torch.manual_seed(seed)
        return module.Model(cfg, "cpu").eval()


def decay_keys(model):
    return {k for k in model.state_dict() if ".attn.decay." in k}


def test_unpatched_checkpoint_loads_and_only_decay_parameters_are_new(repos):
    unpatched = build(repos.U, configs())
    patched = build(repos.P, configs(powerformer_alpha=0.7), seed=2)
    old, new = unpatched.state_dict(), patched.state_dict()
    assert set(new) - set(old) == decay_keys(patched) == {f"gpt2.base_model.model.h.{i}.attn.decay.alpha" for i in range(2)}
    assert set(old) <= set(new)
    patched.load_state_dict(old)  # strict, as CALF's test phase loads checkpoints
    for key, value in old.items():
        assert torch.equal(patched.state_dict()[key], value), key
    assert all(float(v) == pytest.approx(0.7) for k, v in patched.state_dict().items() if k in decay_keys(patched))


@pytest.fixture(scope="module")
def pair(repos):
    """(unpatched, patched alpha=0, patched alpha=1.5) with the unpatched weights loaded, and an input."""
    unpatched = build(repos.U, configs())
    zero = build(repos.P, configs(powerformer_alpha=0.0), seed=3)
    zero.load_state_dict(unpatched.state_dict())
    decayed = build(repos.P, configs(powerformer_alpha=1.5), seed=4)
    decayed.load_state_dict(unpatched.state_dict())
    torch.manual_seed(0)
    x = torch.randn(3, 12, 7) * 2 + 1
    return unpatched, zero, decayed, x


def test_alpha_zero_reproduces_the_unpatched_forecast(pair):
    unpatched, zero, _, x = pair
    with torch.no_grad():
        a, b = unpatched(x), zero(x)
    assert b["outputs_time"].shape == (3, 6, 7)
    assert (a["outputs_time"] - b["outputs_time"]).abs().max() <= 1e-5
    assert len(a["intermidiate_time"]) == len(b["intermidiate_time"]) == 3
    for u, v in zip(a["intermidiate_time"], b["intermidiate_time"]):
        assert (u - v).abs().max() <= 1e-5
    assert torch.equal(a["outputs_text"], b["outputs_text"])
    assert all(torch.equal(u, v) for u, v in zip(a["intermidiate_text"], b["intermidiate_text"]))


def test_alpha_positive_differs_and_the_text_branch_is_bit_identical(pair):
    unpatched, _, decayed, x = pair
    with torch.no_grad():
        a, c = unpatched(x), decayed(x)
    assert (a["outputs_time"] - c["outputs_time"]).abs().max() > 1e-3
    assert torch.equal(a["outputs_text"], c["outputs_text"])


def test_time_branch_attention_follows_the_decay_bias(pair):
    _, _, decayed, x = pair
    gpt2 = decayed.gpt2.base_model.model
    tokens = decayed.time_in(x.transpose(1, 2))  # (B, M, E), as forecast builds them (normalisation aside)
    inputs = {}

    def keep(i):
        def hook(module, args, out):
            inputs[i] = (args[0], out[0])  # the attention's input and output
        return hook

    hooks = [block.attn.register_forward_hook(keep(i)) for i, block in enumerate(gpt2.h)]
    with torch.no_grad():
        out = gpt2.accustum_forward(inputs_embeds=tokens)
    for h in hooks:
        h.remove()
    heads, m = gpt2.config.n_head, tokens.shape[1]
    bias = reference_bias("powerlaw", [1.5], m, m)  # (1, M, M) float64
    for i, block in enumerate(gpt2.h):
        hidden, y = inputs[i]
        with torch.no_grad():
            q, k, v = (t.double().view(3, m, heads, -1).transpose(1, 2)
                       for t in block.attn.c_attn(hidden).split(gpt2.config.n_embd, dim=2))
        w_ref = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias, dim=-1)
        assert (out.attentions[i].double() - w_ref).abs().max() <= 1e-5  # the weights CALF's config returns
        # the blockwise path (no weights asked) computes the same attention
        with torch.no_grad():
            fast, _, none = block.attn(hidden, output_attentions=False)
            y_ref = block.attn.c_proj((w_ref @ v).transpose(1, 2).reshape(3, m, -1).float())
        assert none is None and (fast - y_ref).abs().max() <= 1e-5 and (y - y_ref).abs().max() <= 1e-5
        # later tokens attend less to far-away ones than causal attention would: the bias is there
        assert float(bias[0, -1, 0]) == pytest.approx(-1.5 * math.log(m))


def test_peft_lora_still_targets_c_attn(pair):
    _, zero, _, x = pair
    assert type(zero.gpt2).__name__ == "PeftModelForCausalLM"
    gpt2 = zero.gpt2.base_model.model
    assert type(gpt2).__name__ == "PowerformerAccustumGPT2Model"
    for block in gpt2.h:
        assert hasattr(block.attn.c_attn, "lora_A") and hasattr(block.attn.c_attn, "lora_B")
    zero.train()
    zero(x)["outputs_time"].sum().backward()
    grads = {n: p.grad for n, p in zero.gpt2.named_parameters() if "lora_B" in n}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())
    zero.zero_grad()
    zero.eval()


def test_default_alpha_and_decay_come_from_getattr(repos):
    model = build(repos.P, configs())  # no powerformer_* attributes: the injected defaults
    attn = model.gpt2.base_model.model.h[0].attn
    assert attn.decay.decay == "powerlaw" and float(attn.decay.alpha) == 1.0
    model = build(repos.P, configs(powerformer_alpha=3.0, powerformer_decay="step"))
    attn = model.gpt2.base_model.model.h[1].attn
    assert attn.decay.decay == "step" and float(attn.decay.alpha) == 3.0


def build_tracking_rng(module, cfg, seed):
    """``build``, and the global RNG state right after the model is built."""
    model = build(module, cfg, seed)
    return model, torch.random.get_rng_state()


@pytest.mark.parametrize("alpha", [0.0, 1.5])
def test_same_seed_same_initial_weights_and_random_stream_as_unpatched(repos, alpha):
    unpatched, u_state = build_tracking_rng(repos.U, configs(), seed=20)
    patched, p_state = build_tracking_rng(repos.P, configs(powerformer_alpha=alpha), seed=20)
    old, new = unpatched.state_dict(), patched.state_dict()
    assert set(new) - set(old) == decay_keys(patched)
    differ = sorted(k for k in old if not torch.equal(old[k], new[k]))
    assert differ == [], f"{len(differ)} of {len(old)} initial tensors differ: {differ[:5]}"
    assert any("lora_A" in k for k in old)  # the adapters (drawn after the time branch is built) are among them
    assert torch.equal(u_state, p_state)  # what the script draws next (data order, dropout) is the same too


def test_alpha_zero_trains_like_the_unpatched_model_under_one_seed(repos):
    """Dropout included: with alpha 0, a training-mode forward under the same seed is the unpatched one."""
    cfg = configs(lora_dropout=0.1)
    outs = []
    for module, extra in ((repos.U, {}), (repos.P, {"powerformer_alpha": 0.0})):
        model = build(module, types.SimpleNamespace(**{**vars(cfg), **extra}), seed=7).train()
        torch.manual_seed(8)
        x = torch.randn(2, 12, 5)
        outs.append(model(x)["outputs_time"])
        outs.append(torch.random.get_rng_state())
    assert (outs[0] - outs[2]).abs().max() <= 1e-5
    assert torch.equal(outs[1], outs[3])


def test_a_checkpoint_with_another_alpha_wins_with_a_warning(repos):
    saved = build(repos.P, configs(powerformer_alpha=1.0)).state_dict()
    model = build(repos.P, configs(powerformer_alpha=2.0))
    with pytest.warns(UserWarning, match=r"decay alpha 1\.0 replaces the configured 2\.0 .*the checkpoint wins") as seen:
        model.load_state_dict(saved)
    assert len([w for w in seen if "checkpoint wins" in str(w.message)]) >= 1
    assert all(float(v) == 1.0 for k, v in model.state_dict().items() if k in decay_keys(model))
    same = build(repos.P, configs(powerformer_alpha=1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same.load_state_dict(saved)  # the same alpha (CALF reloading its own best checkpoint): no warning


def test_run_py_names_and_prints_the_powerformer_options(repos):
    out = subprocess.run([sys.executable, "run.py", "--powerformer_alpha", "0.5", "--powerformer_decay", "step"],
                         cwd=repos.patched, capture_output=True, text=True, check=True).stdout
    assert re.search(r"Alpha:\s+0\.5\s+Decay:\s+step", out)
    assert out.rstrip().endswith("_gpt6_0_wcmha-step-0.5")  # the setting string: checkpoint folder, result lines
    out = subprocess.run([sys.executable, "run.py", "--is_training", "0"], cwd=repos.patched, capture_output=True,
                         text=True, check=True).stdout
    assert out.rstrip().endswith("_gpt6_0_wcmha-powerlaw-1.0")
    base = subprocess.run([sys.executable, "run.py"], cwd=repos.base, capture_output=True, text=True,
                          check=True).stdout
    assert "wcmha" not in base and base.rstrip().endswith("_gpt6_0")


def test_the_patched_repo_needs_no_new_package(repos):
    assert third_party_imports(repos.base, {"models", "utils"}) == {"torch", "transformers", "peft", "einops"}
    assert third_party_imports(repos.patched, {"models", "utils"}) == third_party_imports(repos.base, {"models", "utils"})


# --- PowerformerGPT2 (the recipe template) against transformers' GPT-2 --------------------------------------------


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    return GPT2Model(GPT2Config(**TINY_GPT2, output_hidden_states=True, attn_implementation="eager")).eval()


def test_from_gpt2_copies_every_weight(gpt2):
    model = PowerformerGPT2Model.from_gpt2(gpt2, alpha=0.5)
    theirs, ours = gpt2.state_dict(), model.state_dict()
    assert set(ours) - set(theirs) == {f"h.{i}.attn.decay.alpha" for i in range(3)}
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key
    truncated = GPT2Model(gpt2.config)
    truncated.h = truncated.h[:2]
    assert len(PowerformerGPT2Model.from_gpt2(truncated).h) == 2


def test_alpha_zero_equals_gpt2(gpt2):
    model = PowerformerGPT2Model.from_gpt2(gpt2, alpha=0.0).eval()
    torch.manual_seed(1)
    embeds = torch.randn(2, 9, TINY_GPT2["n_embd"])
    ids = torch.randint(0, TINY_GPT2["vocab_size"], (2, 9))
    mask = torch.ones(2, 9)
    mask[0, :2] = 0  # left padding
    cases = [dict(inputs_embeds=embeds), dict(input_ids=ids, token_type_ids=ids.flip(1)),
             dict(input_ids=ids, attention_mask=mask), dict(inputs_embeds=embeds, position_ids=torch.arange(3, 12)[None])]
    with torch.no_grad():
        for kw in cases:
            rows = slice(2, None) if "attention_mask" in kw else slice(None)  # queries that are not padding
            for attentions in (False, True):
                a = gpt2(**kw, output_attentions=attentions)
                b = model(**kw, output_attentions=attentions)
                assert (a.last_hidden_state[:, rows] - b.last_hidden_state[:, rows]).abs().max() <= 1e-5, kw
                assert len(a.hidden_states) == len(b.hidden_states) == 4
                if attentions:
                    assert len(a.attentions) == len(b.attentions) == 3
                    for u, v in zip(a.attentions, b.attentions):
                        assert (u[:, :, rows] - v[:, :, rows]).abs().max() <= 1e-5, kw


def test_cached_decoding_equals_one_forward():
    torch.manual_seed(2)
    model = PowerformerGPT2Model(GPT2Config(**TINY_GPT2), powerformer_alpha=1.0).eval()
    x = torch.randn(1, 10, TINY_GPT2["n_embd"])
    with torch.no_grad():
        full = model(inputs_embeds=x, use_cache=True).last_hidden_state
        past, steps = None, []
        for t in range(10):
            out = model(inputs_embeds=x[:, t : t + 1], past_key_values=past, use_cache=True)
            past = out.past_key_values
            steps.append(out.last_hidden_state)
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-5
    assert past[0][0].shape == (1, TINY_GPT2["n_head"], 10, TINY_GPT2["n_embd"] // TINY_GPT2["n_head"])


def test_gpt2_attention_scaling_options_are_followed():
    config = GPT2Config(**TINY_GPT2, scale_attn_by_inverse_layer_idx=True, attn_implementation="eager")
    torch.manual_seed(3)
    reference = GPT2Model(config).eval()
    model = PowerformerGPT2Model.from_gpt2(reference, alpha=0.0).eval()
    x = torch.randn(2, 7, TINY_GPT2["n_embd"])
    with torch.no_grad():
        assert (reference(inputs_embeds=x).last_hidden_state - model(inputs_embeds=x).last_hidden_state).abs().max() <= 1e-5


def test_return_tuple_and_unsupported_arguments(gpt2):
    model = PowerformerGPT2Model.from_gpt2(gpt2).eval()
    x = torch.randn(1, 4, TINY_GPT2["n_embd"])
    with torch.no_grad():
        out = model(inputs_embeds=x, return_dict=False, use_cache=False)
    assert isinstance(out, tuple) and len(out) == 2 and out[0].shape == (1, 4, TINY_GPT2["n_embd"])
    with pytest.raises(ValueError, match="head_mask"):
        model(inputs_embeds=x, head_mask=torch.ones(3, 4))
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model()
    assert not PowerformerGPT2Model.can_generate()
