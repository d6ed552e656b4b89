"""The wave_transformer recipes (ahs, fcl, pcca, mrwp, enhancements, wcmha) on the Wave-Transformer look-alike:
flags off change nothing, each flag does what it says, save/load round-trips, the engine's contract, HEAD's shape."""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
import types
from pathlib import Path

import git
import pytest
import torch

from reference import reference_bias
from repo_checks import commit_all, snapshot, third_party_imports
from tsattn.examples import import_from, lookalike_repo
from tsattn.injector import cli, engine, transaction
from tsattn.injector.templates import MODULES

LOOK, HEAD = "wave_transformer_lookalike", "wave_transformer_lookalike_head"
FEATURES = ["ahs", "fcl", "pcca", "mrwp", "enhancements", "wcmha"]
CORE = "src/wave_transformer/core"
H, LAYERS, VOCAB = 8, 3, 40  # d_model = 24, 4 query heads of 6, 2 kv heads


def load(root: Path) -> types.SimpleNamespace:
    """The model classes of the repository at ``root`` (imported from its src/, then forgotten)."""
    src = root / "src"
    return types.SimpleNamespace(
        root=root,
        WT=import_from(src, "wave_transformer.core.wave_transformer").WaveTransformer,
        Enc=import_from(src, "wave_transformer.language_modelling.token_encoder").TokenToWaveEncoder,
        Dec=import_from(src, "wave_transformer.language_modelling.token_decoder").WaveToTokenDecoder,
    )


def build(repo, seed: int = 0, **options):
    torch.manual_seed(seed)
    config = dict(num_harmonics=H, transformer_num_layers=LAYERS, transformer_num_heads=4, transformer_heads_kv=2,
                  transformer_d_ff_multi=2, dropout=0.0, use_flash=False)
    config.update(options)
    return repo.WT(repo.Enc(VOCAB, H, 16), repo.Dec(VOCAB, H, 16, 2, 2), **config).eval()


def tokens(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (2, 12), generator=g)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0  # right padding
    return {"token_ids": ids}, mask


def differs(a, b, at_least=1e-4) -> bool:
    return (a - b).abs().max().item() > at_least


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py: tiny models


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """The look-alike unpatched, with each feature injected, and with enhancements then wcmha ("all")."""
    root = tmp_path_factory.mktemp("wave")
    out = {"base": lookalike_repo(LOOK, root / "base")}
    for feature in FEATURES:
        out[feature] = lookalike_repo(LOOK, root / feature)
        engine.inject(out[feature], feature, patch_out=root / f"{feature}.patch")
    out["all"] = lookalike_repo(LOOK, root / "all")
    engine.inject(out["all"], "enhancements", patch_out=root / "all1.patch")
    commit_all(out["all"])
    engine.inject(out["all"], "wcmha", patch_out=root / "all2.patch")
    assert not [m for m in sys.modules if m.split(".")[0] == "wave_transformer"]  # the target was never imported
    return {name: load(path) for name, path in out.items()}


# --- flags off ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("feature", FEATURES + ["all"])
def test_flags_off_change_nothing(repos, feature, tmp_path):
    base, patched = build(repos["base"]), build(repos[feature])
    assert list(patched.state_dict()) == list(base.state_dict())
    assert all(torch.equal(patched.state_dict()[k], v) for k, v in base.state_dict().items())
    x, mask = tokens()
    with torch.no_grad():
        for causal in (True, False):
            for m in (None, mask):
                assert torch.equal(base(x, causal=causal, attention_mask=m), patched(x, causal=causal, attention_mask=m))
        out, wave = patched(x, return_encoder_outputs=True)
        assert torch.equal(out, base(x)) and torch.equal(wave.to_representation(), base(x, return_encoder_outputs=True)[1].to_representation())
        base.train(), patched.train()
        assert torch.equal(base(x), patched(x))
    base.save(tmp_path / "base")
    patched.save(tmp_path / "patched")
    for name in ("transformer_config.json", "encoder_config.json", "decoder_config.json"):
        assert (tmp_path / "patched" / name).read_bytes() == (tmp_path / "base" / name).read_bytes(), name


# --- each flag ---------------------------------------------------------------------------------------------------


def blocks_input(model, x, **kw):
    """The representation entering the first block (B, S, 3H), and the output."""
    seen = []
    hook = model.layers[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    try:
        out = model(x, **kw)
    finally:
        hook.remove()
    return seen[0], out


def test_ahs_keeps_k_harmonics_per_position_and_returns_stats_only_when_asked(repos):
    r = repos["ahs"]
    base, model = build(r), build(r, use_ahs=True, ahs_k_ratio=0.25)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("ahs.") for k in missing)
    x, mask = tokens()
    with torch.no_grad():
        wave = base(x, return_encoder_outputs=True)[1].to_representation()
        seen, out = blocks_input(model, x)
        assert isinstance(out, torch.Tensor) and differs(out, base(x))
        kept = seen.view(2, 12, 3, H).ne(0).any(dim=2)  # (B, S, H)
        assert kept.sum(-1).eq(2).all()  # round(0.25 * 8) harmonics at every position
        assert torch.equal(seen.view(2, 12, 3, H) * kept[:, :, None], wave.view(2, 12, 3, H) * kept[:, :, None])
        out2, stats = model(x, return_ahs_stats=True)
        assert torch.equal(out2, out) and float(stats["actual_k_mean"]) == 2.0 and float(stats["sparsity"]) == 0.75
        out3, wave3, stats3 = model(x, return_encoder_outputs=True, return_ahs_stats=True)
        assert torch.equal(out3, out) and torch.equal(wave3.to_representation(), wave)
        assert model(x, return_encoder_outputs=True)[0].shape == out.shape
    model.train()
    out, stats = model(x, attention_mask=mask, return_ahs_stats=True)
    (out.square().mean() + stats["selection_mask"].mean()).backward()
    assert model.ahs.score_head.weight.grad is not None and model.ahs.score_head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="use_ahs=True"):
        base(x, return_ahs_stats=True)


def test_fcl_masks_high_harmonics_in_training_only(repos):
    r = repos["fcl"]
    base, model = build(r), build(r, use_fcl=True, fcl_mask_slope=10.0)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in base.state_dict().items())  # no new weights
    x, _ = tokens()
    with torch.no_grad():
        wave = base(x, return_encoder_outputs=True)[1].to_representation()
        assert torch.equal(model(x, freq_limit=0.3), base(x))  # eval: unchanged
        base.train(), model.train()
        assert torch.equal(model(x, freq_limit=1.0), base(x)) and torch.equal(model(x), base(x))
        seen, out = blocks_input(model, x, freq_limit=0.3)
        assert differs(out, base(x))
        edges = (torch.arange(H) + 1) / H
        factor = seen.view(2, 12, 3, H) / wave.view(2, 12, 3, H)
        assert torch.allclose(factor[..., edges <= 0.3], torch.ones(())) and factor[..., edges >= 0.4].eq(0).all()
    with pytest.raises(ValueError, match="use_fcl=True"):
        base(x, freq_limit=0.5)


def test_pcca_replaces_the_attention_and_beta_zero_reproduces_the_loaded_weights(repos):
    r = repos["pcca"]
    base = build(r)
    model = build(r, use_pcca=True, seed=5)
    assert all(type(block.attn).__name__ == "PhaseCoherentAttention" for block in model.layers)
    assert type(model.wave_decoder.self_attention).__name__ == "MultiQueryFlashAttention"  # not a block: kept
    model.load_state_dict(base.state_dict())  # strict: kv_proj split, rotary tables dropped, blend kept
    assert all(b.attn.beta.item() == 0.5 and b.attn.alpha.item() == 1.0 for b in model.layers)
    x, mask = tokens()
    with torch.no_grad():
        assert differs(model(x), base(x))
        for block in model.layers:
            block.attn.beta.zero_()
        for causal in (True, False):
            for m in (None, mask):
                a, b = base(x, causal=causal, attention_mask=m), model(x, causal=causal, attention_mask=m)
                assert (a - b).abs().max() <= 1e-5, (causal, m)
    cosine, complex_ = build(r, use_pcca=True, seed=1), build(r, use_pcca=True, pcca_mode="complex", seed=1)
    with torch.no_grad():
        assert complex_.layers[0].attn.phase_coherence_mode == "complex" and differs(cosine(x), complex_(x))


def test_mrwp_runs_every_pyramid_interval_blocks(repos):
    r = repos["mrwp"]
    base = build(r)
    x, mask = tokens()
    for interval, expected in ((1, "0P1P2P"), (2, "01P2"), (3, "012P")):
        model = build(r, use_mrwp=True, pyramid_interval=interval)
        missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("pyramid.") for k in missing)
        order = []
        hooks = [b.register_forward_hook(lambda *a, i=i: order.append(str(i))) for i, b in enumerate(model.layers)]
        hooks.append(model.pyramid.register_forward_hook(lambda *a: order.append("P")))
        with torch.no_grad():
            out = model(x, attention_mask=mask)
        for h in hooks:
            h.remove()
        assert "".join(order) == expected and out.shape == (2, 12, VOCAB) and differs(out, base(x, attention_mask=mask))
    for bad in (0, LAYERS + 1):
        with pytest.raises(ValueError, match="pyramid_interval"):
            build(r, use_mrwp=True, pyramid_interval=bad)


def reference_block_attention(attn, x, decay, alpha, causal, cutoff=None):
    """MultiQueryFlashAttention's manual path with the WCMHA bias, float64, from its weights and definitions."""
    b, n, _ = x.shape
    hq, hkv, d = attn.n_heads_q, attn.n_heads_kv, attn.d_head
    q = (x @ attn.q_proj.weight.T).view(b, n, hq, d)
    k, v = (x @ attn.kv_proj.weight.T).view(b, n, 2, hkv, d).unbind(2)
    q, k = attn.yarn_rope(q, k)  # the repository's rotary embedding (not under test)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2).repeat_interleave(hq // hkv, 1), v.transpose(1, 2).repeat_interleave(hq // hkv, 1)
    bias = reference_bias(decay, [alpha], n, n, cutoff=cutoff, causal=causal)  # (1, N, N)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + bias, dim=-1)
    return (w @ v).transpose(1, 2).reshape(b, n, hq * d) @ attn.out_proj.weight.T


def test_wcmha_adds_the_decay_bias_and_alpha_zero_is_the_original(repos):
    r = repos["wcmha"]
    base = build(r)
    zero = build(r, use_wcmha=True, wcmha_alpha=0.0, seed=3)
    decayed = build(r, use_wcmha=True, wcmha_alpha=1.5, seed=4)
    for model in (zero, decayed):
        model.load_state_dict(base.state_dict())  # strict: the decay keeps its configured alpha
    assert float(decayed.layers[0].attn.decay_bias.alpha) == 1.5 and decayed.wave_decoder.self_attention.decay_bias is None
    x, mask = tokens()
    with torch.no_grad():
        for causal in (True, False):
            for m in (None, mask):
                a = base(x, causal=causal, attention_mask=m)
                assert (a - zero(x, causal=causal, attention_mask=m)).abs().max() <= 1e-6
                assert differs(a, decayed(x, causal=causal, attention_mask=m))
    with pytest.raises(ValueError, match="use_flash=False"):
        build(r, use_wcmha=True, use_flash=True)


def test_wcmha_window_with_padding_leaves_the_real_positions_alone(repos):
    # step decay of width 2: the last padded query sees only padded keys; its row must not turn into NaN and
    # spread (0 * NaN) to the real positions in the next layer
    model = build(repos["wcmha"], use_wcmha=True, wcmha_decay="step", wcmha_alpha=2.0)
    x, mask = tokens()
    with torch.no_grad():
        out = model(x, attention_mask=mask)
        alone = model({"token_ids": x["token_ids"][1:, :9]})
    assert torch.isfinite(out).all()
    assert (out[1, :9] - alone[0]).abs().max() <= 1e-5


@pytest.mark.parametrize("decay, alpha, causal, cutoff", [
    ("powerlaw", 1.5, True, None), ("powerlaw", 0.75, False, None), ("simpowerlaw", 0.5, True, 4), ("step", 3.0, True, None),
])
def test_wcmha_block_attention_against_a_float64_reference(repos, decay, alpha, causal, cutoff):
    model = build(repos["all"], use_wcmha=True, wcmha_decay=decay, wcmha_alpha=alpha, wcmha_cutoff=cutoff).double()
    attn = model.layers[1].attn
    x = torch.randn(2, 11, 3 * H, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        err = (attn(x, causal, None) - reference_block_attention(attn, x, decay, alpha, causal, cutoff)).abs().max()
    assert err <= 1e-10


def test_pcca_and_wcmha_together_give_pcca_the_decay(repos):
    model = build(repos["all"], use_pcca=True, use_wcmha=True, wcmha_decay="step", wcmha_alpha=2.0, wcmha_cutoff=6)
    decay = model.layers[0].attn.decay
    assert type(model.layers[0].attn).__name__ == "PhaseCoherentAttention"
    assert decay.decay == "step" and float(decay.alpha) == 2.0 and decay.cutoff == 6


def test_every_flag_on_runs_forward_and_backward(repos):
    model = build(repos["all"], use_ahs=True, use_fcl=True, use_pcca=True, use_mrwp=True, pyramid_interval=2,
                  use_wcmha=True).train()
    x, mask = tokens()
    out, stats = model(x, attention_mask=mask, freq_limit=0.6, return_ahs_stats=True)
    assert out.shape == (2, 12, VOCAB) and torch.isfinite(out).all()
    out.logsumexp(-1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


# --- save / load ----------------------------------------------------------------------------------------------------


ALL_OPTIONS = dict(use_ahs=True, ahs_k_ratio=0.25, ahs_dynamic_k=True, ahs_temperature=0.5, use_fcl=True,
                   fcl_mask_slope=5.0, use_pcca=True, pcca_mode="complex", pcca_phase_temp=2.0, use_mrwp=True,
                   pyramid_interval=2, mrwp_band_boundaries=(0.3,), mrwp_band_num_layers=(1, 2), mrwp_cross_band=False,
                   use_wcmha=True, wcmha_decay="simpowerlaw", wcmha_alpha=0.7, wcmha_cutoff=5, max_seq_len=64)


@pytest.mark.parametrize("options", [
    ALL_OPTIONS,
    dict(use_wcmha=True, wcmha_decay="step", wcmha_alpha=2.0),  # the decay in MultiQueryFlashAttention
    dict(use_pcca=True, pcca_mode="cosine"),
])
def test_save_then_load_round_trips_every_option(repos, tmp_path, options):
    r = repos["all"]
    model = build(r, **options)
    with torch.no_grad():
        for p in model.parameters():  # trained weights, not the initial ones
            p.add_(0.01 * torch.randn_like(p))
    model.save(tmp_path)
    config = json.loads((tmp_path / "transformer_config.json").read_text())
    expected = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
    assert {k: config[k] for k in expected} == expected
    loaded = r.WT.load(tmp_path, r.Enc, r.Dec).eval()
    for name, value in expected.items():
        assert getattr(loaded, name) == value, name
    state = model.state_dict()
    assert list(loaded.state_dict()) == list(state)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    x, mask = tokens()
    with torch.no_grad():
        assert torch.equal(loaded(x, attention_mask=mask), model(x, attention_mask=mask))


def test_checkpoints_of_the_unpatched_model_load(repos, tmp_path):
    old = build(repos["base"])
    old.save(tmp_path / "old")
    r = repos["all"]
    loaded = r.WT.load(tmp_path / "old", r.Enc, r.Dec).eval()
    assert not (loaded.use_ahs or loaded.use_fcl or loaded.use_pcca or loaded.use_mrwp or loaded.use_wcmha)
    x, mask = tokens()
    with torch.no_grad():
        assert torch.equal(loaded(x, attention_mask=mask), old(x, attention_mask=mask))
    # upstream's save() omits max_seq_len, so its load() fails for another length; the patched save() writes it
    build(repos["base"], max_seq_len=64).save(tmp_path / "old64")
    with pytest.raises(RuntimeError, match="size mismatch"):
        repos["base"].WT.load(tmp_path / "old64", repos["base"].Enc, repos["base"].Dec)
    build(r, max_seq_len=64).save(tmp_path / "new64")
    assert r.WT.load(tmp_path / "new64", r.Enc, r.Dec).max_seq_len == 64


# --- the patched repository -----------------------------------------------------------------------------------------


def test_templates_coexist_with_the_repositorys_own_enhancements_package(repos):
    root = repos["enhancements"].root
    changed = git.Repo(root).git.status("--porcelain", "--untracked-files=all").splitlines()
    assert sorted(line[3:] for line in changed) == sorted(
        [f"{CORE}/transformer.py", f"{CORE}/wave_transformer.py"]
        + [f"src/wave_transformer/tsattn_modules/{n}" for n in
           ("__init__.py", "wave_ahs.py", "wave_fcl.py", "wave_mrwp.py", "wave_pcca.py", "wcmha.py")])
    for name in ("wave_ahs.py", "wave_fcl.py", "wave_pcca.py", "wave_mrwp.py", "wcmha.py"):
        assert (root / "src/wave_transformer/tsattn_modules" / name).read_bytes() == (MODULES / name).read_bytes()
    theirs = import_from(root / "src", "wave_transformer.enhancements")
    ours = import_from(root / "src", "wave_transformer.tsattn_modules.wave_pcca")
    assert theirs.PhaseCoherentAttention.origin == "wave_transformer.enhancements"
    assert ours.PhaseCoherentAttention.__module__ == "wave_transformer.tsattn_modules.wave_pcca"


def test_the_patched_repository_needs_no_new_package(repos):
    # (flash_attn is imported inside MultiQueryFlashAttention only with use_flash; matplotlib, an upstream
    # dependency, inside FrequencyCurriculumScheduler.plot_schedule only)
    def imported(root: Path) -> set:  # at import time: module level, not inside functions
        return third_party_imports(root / "src", {"wave_transformer"}, module_level_only=True)

    assert imported(repos["all"].root) == imported(repos["base"].root) == {"torch"}


# --- the engine's contract on this recipe ---------------------------------------------------------------------------


@pytest.fixture
def wave(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return lookalike_repo(LOOK, tmp_path / "Wave-Transformer")


def test_inject_again_update_and_revert_byte_identical(wave):
    before = snapshot(wave)
    engine.inject(wave, "enhancements")
    first = snapshot(wave)
    assert engine.inject(wave, "enhancements").status == "already applied" and snapshot(wave) == first
    result = engine.inject(wave, "enhancements", {"k_ratio": 0.25, "pyramid_interval": 2, "pcca_mode": "complex"})
    assert result.status == "updated" and set(result.changed) == {f"{CORE}/wave_transformer.py", f"{CORE}/transformer.py"}
    model = (wave / CORE / "wave_transformer.py").read_text()
    assert "ahs_k_ratio=0.25" in model and "pyramid_interval=2" in model and "pcca_mode='complex'" in model
    assert model.count("def harmonic_selection") == 1 and model.count("self.use_ahs = use_ahs") == 1
    assert model.count("x = self.frequency_curriculum(x, freq_limit)") == 1
    assert (wave / CORE / "transformer.py").read_text().count("PhaseCoherentAttention(d_model") == 1
    assert cli.main(["--target", str(wave), "--feature", "enhancements", "--revert"]) == 0
    assert snapshot(wave) == before and git.Repo(wave).git.status("--porcelain") == ""


@pytest.mark.parametrize("overlay", [None, HEAD], ids=["b33e609-like", "HEAD-like"])
@pytest.mark.parametrize("feature", FEATURES)
def test_every_feature_injects_and_its_patch_applies_to_a_fresh_clone(tmp_path, feature, overlay):
    target = lookalike_repo(LOOK, tmp_path / "a", overlay=overlay)
    patch = tmp_path / "x.patch"
    assert cli.main(["--target", str(target), "--feature", feature, "--patch-out", str(patch)]) == 0
    fresh = tmp_path / "fresh"
    git.Repo.clone_from(target, fresh)
    subprocess.run(["git", "apply", str(patch)], cwd=fresh, check=True)
    assert snapshot(fresh) == snapshot(target)
    assert engine.inject(fresh, feature, patch_out=tmp_path / "y.patch").status == "already applied"


def test_a_fault_mid_write_restores_every_file(wave, monkeypatch):
    before = snapshot(wave)
    real, calls = transaction._replace, []

    def faulty(src, dst):
        calls.append(dst)
        if len(calls) == 4:
            raise OSError("disk full")
        real(src, dst)

    monkeypatch.setattr(transaction, "_replace", faulty)
    with pytest.raises(OSError):
        engine.inject(wave, "enhancements")
    assert len(calls) > 4 and snapshot(wave) == before and not (wave / ".git/tsattn").exists()


def _forward_body(root: Path) -> list:
    tree = ast.parse((root / CORE / "wave_transformer.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "WaveTransformer")
    forward = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "forward")
    return [ast.unparse(s) for s in forward.body]


@pytest.mark.parametrize("first, second, options", [
    ("ahs", "fcl", dict(use_ahs=True, use_fcl=True)),
    ("pcca", "wcmha", dict(use_pcca=True, use_wcmha=True, wcmha_alpha=2.0)),
])
def test_features_stack_in_either_order_to_the_same_model(tmp_path, first, second, options):
    models, bodies = [], []
    for name, order in (("ab", (first, second)), ("ba", (second, first))):
        target = lookalike_repo(LOOK, tmp_path / name)
        for feature in order:
            engine.inject(target, feature, patch_out=tmp_path / f"{name}.patch")
            commit_all(target, feature)
        bodies.append(_forward_body(target))
        models.append(build(load(target), **options).train())
    assert bodies[0] == bodies[1]
    if first == "ahs":  # the mask comes before the selection
        i = bodies[0].index("x = self.frequency_curriculum(x, freq_limit)")
        assert bodies[0][i + 1] == "x, ahs_stats = self.harmonic_selection(x, return_ahs_stats)"
    x, mask = tokens()
    outs = []
    for model in models:
        torch.manual_seed(0)  # AHS draws Gumbel noise while training
        outs.append(model(x, attention_mask=mask, freq_limit=0.5) if "use_fcl" in options else model(x))
    assert torch.equal(outs[0], outs[1])


def test_head_variant_runs_once_its_memory_imports_are_removed(tmp_path):
    target = lookalike_repo(LOOK, tmp_path / "head", overlay=HEAD)
    engine.inject(target, "enhancements", patch_out=tmp_path / "1.patch")
    commit_all(target)
    engine.inject(target, "wcmha", patch_out=tmp_path / "2.patch")
    with pytest.raises(ModuleNotFoundError, match="memory"):
        load(target)
    path = target / CORE / "transformer.py"
    path.write_text("".join(line for line in path.read_text().splitlines(True) if not line.startswith("from memory.")))
    repo = load(target)
    model = build(repo, use_ahs=True, use_fcl=True, use_pcca=True, use_mrwp=True, pyramid_interval=1, use_wcmha=True)
    x, mask = tokens()
    model.train()
    model(x, attention_mask=mask, freq_limit=0.5).mean().backward()
    assert type(build(repo).layers[0].norm).__name__ == "LayerNorm"


def test_list_and_option_errors(wave, capsys):
    assert cli.main(["--list"]) == 0
    out = capsys.readouterr().out
    column = out.splitlines()[0].split().index("wave_transformer")  # later kinds add columns after it
    for feature in FEATURES:
        line = next(l for l in out.splitlines() if l.split()[:1] == [feature])
        assert line.split()[column] == "yes", line
        assert f"wave_transformer/{feature}" in out
    for flag in ("--k_ratio", "--mask_slope", "--pcca_mode {cosine,complex}", "--pyramid_interval"):
        assert flag in out
    before = snapshot(wave)
    for args, message in ((["--feature", "ahs", "--k_ratio", "0"], "--k_ratio 0.0: must be in (0, 1]"),
                          (["--feature", "mrwp", "--pyramid_interval", "0"], "--pyramid_interval 0: must be >= 1"),
                          (["--feature", "wcmha", "--alpha", "-1"], "--alpha -1.0"),
                          (["--feature", "fcl", "--k_ratio", "0.5"], "--k_ratio is not an option of wave_transformer/fcl")):
        assert cli.main(["--target", str(wave), *args]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--target", str(wave), "--feature", "pcca", "--pcca_mode", "polar"])
    assert snapshot(wave) == before


def test_the_demo_step_runs_and_checks_what_it_claims():
    import argparse

    from tsattn import demo

    assert demo.step_wave_transformer in [fn for _, fn in demo.STEPS]
    out = demo.step_wave_transformer(argparse.Namespace(length=256))
    assert "flags off: outputs and weights identical" in out and "save -> load: outputs identical" in out
