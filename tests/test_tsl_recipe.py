"""The time_series_library/wcmha recipe on the Time-Series-Library look-alike: FullAttention with a decay against an
independent float64 reference (mask_flag true and false), no decay bit for bit the unpatched models, only the
self-attention gets the decay, run.py trains with the new flags, and the engine's contract (idempotent, revert,
fresh clone, rollback, missing anchors)."""

from __future__ import annotations

import math
import subprocess
import sys
import types
from pathlib import Path

import git
import pytest
import torch

from reference import reference_attention, reference_bias
from repo_checks import commit_all, snapshot, third_party_imports
from tsattn.examples import imports_from, lookalike_repo
from tsattn.injector import cli, engine, transaction
from tsattn.injector.targets import detect

LOOK = "tsl_lookalike"
ATTENTION = "layers/SelfAttention_Family.py"
EDITED = {ATTENTION, "run.py", *(f"models/{m}.py" for m in
                                 ("Transformer", "PatchTST", "iTransformer", "PAttn", "TimeXer", "MultiPatchFormer"))}
FORECASTERS = ("Transformer", "PatchTST", "iTransformer")
# decay type, scale, the reference's (name, order)
DECAYS = [("causal", 0.0, ("none", 1)), ("step", 2.0, ("step", 1)), ("butter1", 12.0, ("butterworth", 1)),
          ("butter2", 7.0, ("butterworth", 2)), ("powerlaw", 0.7, ("powerlaw", 1)), ("powerLaw", -1.3, ("powerlaw", 1)),
          ("simpowerlaw", 0.5, ("simpowerlaw", 1))]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def configs(**kw):
    base = dict(task_name="long_term_forecast", seq_len=24, label_len=12, pred_len=8, enc_in=3, dec_in=3, c_out=3,
                d_model=16, n_heads=2, e_layers=2, d_layers=1, d_ff=32, factor=1, dropout=0.1, activation="gelu")
    return types.SimpleNamespace(**{**base, **kw})


def load(root: Path, *models: str) -> types.SimpleNamespace:
    """The attention layers and the models of one copy, sharing one ``layers`` package."""
    names = ["layers.SelfAttention_Family", *(f"models.{m}" for m in models)]
    with imports_from(root) as module:
        return types.SimpleNamespace(**{n.split(".")[-1]: module(n) for n in names})


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("tsl")
    base = lookalike_repo(LOOK, root / "base")
    patched = lookalike_repo(LOOK, root / "patched")
    result = engine.inject(patched, "wcmha", patch_out=root / "p.patch")
    assert result.status == "applied" and set(result.changed) == EDITED and result.added == ["layers/PowerformerDecay.py"]
    every = ("Transformer", "PatchTST", "iTransformer", "PAttn", "TimeXer", "MultiPatchFormer")
    return types.SimpleNamespace(base=base, patched=patched, U=load(base, *FORECASTERS), P=load(patched, *every))


def inputs(cfg, batch=3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.seq_len, cfg.enc_in, generator=g, dtype=dtype) * 2 + 1
    dec = torch.randn(batch, cfg.label_len + cfg.pred_len, cfg.dec_in, generator=g, dtype=dtype)
    return x, None, dec, None


def build(module, cfg, seed=1):
    torch.manual_seed(seed)
    return module.Model(cfg)


# --- FullAttention against the float64 reference -------------------------------------------------------------------


@pytest.mark.parametrize("mask_flag", [False, True])
@pytest.mark.parametrize("decay, scale, ref", DECAYS)
@pytest.mark.parametrize("custom_scale", [None, 0.37])
def test_full_attention_with_a_decay_equals_the_float64_reference(repos, mask_flag, decay, scale, ref, custom_scale):
    """softmax(scale * q.k + decay(dt)) under a causal mask, whatever mask_flag says; dropout is off with a decay."""
    B, L, H, E = 2, 11, 3, 4
    attention = repos.P.SelfAttention_Family.FullAttention(
        mask_flag, 1, scale=custom_scale, attention_dropout=0.5, attn_decay_type=decay, attn_decay_scale=scale)
    attention.train()  # the authors switch attention dropout off with a decay: train mode must still be exact
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(B, L, H, E, generator=g, dtype=torch.float64) for _ in range(3))
    out, _ = attention(q, k, v, None)
    name, order = ref
    bias = reference_bias(name, [scale], L, L, order=order)  # (1, L, L), -inf above the diagonal
    assert torch.isinf(bias[0][torch.ones(L, L, dtype=torch.bool).triu(1)]).all()
    factor = 1.0 if custom_scale is None else custom_scale * math.sqrt(E)  # reference_attention scales by 1/sqrt(E)
    expected = reference_attention((q * factor).transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), bias)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected.transpose(1, 2), rtol=0, atol=1e-12)


def test_full_attention_with_a_decay_is_causal_and_no_decay_is_not(repos):
    FullAttention = repos.P.SelfAttention_Family.FullAttention
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 6, 2, 4, generator=g) for _ in range(3))
    for attention, causal in ((FullAttention(False, attn_decay_type="powerlaw", attn_decay_scale=1.0), True),
                              (FullAttention(False, attention_dropout=0.0), False),
                              (FullAttention(False, attention_dropout=0.0, attn_decay_type="none"), False)):
        out = attention.eval()(q, k, v, None)[0]
        changed = v.clone()
        changed[:, -1] += 1.0  # a change at the last key: earlier queries see it only without causality
        out2 = attention(q, k, changed, None)[0]
        assert torch.equal(out[:, :-1], out2[:, :-1]) == causal


def test_full_attention_errors_name_the_option(repos):
    FullAttention = repos.P.SelfAttention_Family.FullAttention
    with pytest.raises(ValueError, match="attn_decay_type"):
        FullAttention(False, attn_decay_type="exponential")
    with pytest.raises(ValueError, match="train_attn_decay"):
        FullAttention(False, attn_decay_type="step", attn_decay_scale=2, train_attn_decay=True)


# --- the models -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", FORECASTERS)
@pytest.mark.parametrize("explicit", [None, "none", "None"])
def test_no_decay_is_the_unpatched_model_bit_for_bit(repos, model, explicit):
    cfg = configs() if explicit is None else configs(attn_decay_type=explicit, attn_decay_scale=0.9)
    unpatched = build(getattr(repos.U, model), configs())
    patched = build(getattr(repos.P, model), cfg, seed=2)
    assert list(patched.state_dict()) == list(unpatched.state_dict())  # no new state
    patched.load_state_dict(unpatched.state_dict())  # strict
    x = inputs(cfg)
    with torch.no_grad():
        assert torch.equal(unpatched.eval()(*x), patched.eval()(*x))
        unpatched.train(), patched.train()
        torch.manual_seed(5)
        a = unpatched(*x)
        torch.manual_seed(5)
        assert torch.equal(a, patched(*x))  # dropout too: the same random draws in the same order


@pytest.mark.parametrize("model", FORECASTERS)
def test_powerlaw_differs_and_unpatched_checkpoints_load(repos, model):
    unpatched = build(getattr(repos.U, model), configs()).eval()
    decayed = build(getattr(repos.P, model), configs(attn_decay_type="powerlaw", attn_decay_scale=1.0), seed=3).eval()
    decayed.load_state_dict(unpatched.state_dict())  # strict: the decay has no state without train_attn_decay
    x = inputs(configs())
    with torch.no_grad():
        a, b = unpatched(*x), decayed(*x)
    assert a.shape == b.shape == (3, 8, 3)
    assert torch.isfinite(b).all() and (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("model", FORECASTERS)
def test_train_attn_decay_adds_one_trainable_scalar_per_self_attention(repos, model):
    cfg = configs(attn_decay_type="powerlaw", attn_decay_scale=0.5, train_attn_decay=True)
    patched = build(getattr(repos.P, model), cfg)
    new = {k for k in patched.state_dict() if k.endswith("attn_decay.scale")}
    expected = {"Transformer": cfg.e_layers + cfg.d_layers}.get(model, cfg.e_layers)  # the decoder's self-attention too
    assert len(new) == expected
    assert all(float(patched.state_dict()[k]) == -0.5 for k in new)  # powerlaw trains -|scale|
    unpatched = build(getattr(repos.U, model), configs())
    missing, unexpected = patched.load_state_dict(unpatched.state_dict(), strict=False)
    assert set(missing) == new and not unexpected
    patched.train()(*inputs(cfg)).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad) for n, p in patched.named_parameters() if n in new)


def _decays(module):
    return [m.inner_attention.attn_decay.is_active for m in module.modules() if hasattr(m, "inner_attention")]


def test_only_self_attention_gets_the_decay(repos):
    cfg = configs(attn_decay_type="simpowerlaw", attn_decay_scale=0.5)
    transformer = build(repos.P.Transformer, cfg)
    assert _decays(transformer.encoder) == [True] * cfg.e_layers
    layer = transformer.decoder.layers[0]
    assert layer.self_attention.inner_attention.attn_decay.is_active
    assert not layer.cross_attention.inner_attention.attn_decay.is_active
    assert isinstance(layer.cross_attention.inner_attention.dropout, torch.nn.Dropout)  # cross: as it was
    assert isinstance(layer.self_attention.inner_attention.dropout, torch.nn.Identity)  # decay: no dropout
    timexer = build(repos.P.TimeXer, cfg)
    assert [(l.self_attention.inner_attention.attn_decay.is_active, l.cross_attention.inner_attention.attn_decay.is_active)
            for l in timexer.layers] == [(True, False)] * cfg.e_layers
    assert _decays(build(repos.P.PAttn, cfg)) == [True]
    assert _decays(build(repos.P.MultiPatchFormer, cfg)) == [True] * (2 * cfg.e_layers)  # patches and channels
    tsa = repos.P.SelfAttention_Family.TwoStageAttentionLayer(cfg, 4, 2, cfg.d_model, cfg.n_heads)
    assert (tsa.time_attention.inner_attention.attn_decay.is_active, tsa.dim_sender.inner_attention.attn_decay.is_active,
            tsa.dim_receiver.inner_attention.attn_decay.is_active) == (True, False, False)
    out = tsa(torch.randn(2, 3, 4, cfg.d_model))
    assert out.shape == (2, 3, 4, cfg.d_model) and torch.isfinite(out).all()
    for model in ("PAttn", "TimeXer", "MultiPatchFormer"):  # and without a decay: nothing anywhere
        assert not any(_decays(build(getattr(repos.P, model), configs())))


def test_the_patched_repository_needs_no_new_package(repos):
    own = {"layers", "models", "utils", "exp"}
    assert third_party_imports(repos.base, own) == third_party_imports(repos.patched, own) == {"torch", "numpy"}


def test_the_look_alike_is_detected_as_time_series_library(repos):
    assert detect(repos.base) == detect(repos.patched) == "time_series_library"


# --- run.py ------------------------------------------------------------------------------------------------------


def write_csv(path: Path, rows: int = 160, variates: int = 3) -> None:
    """Upstream's layout: a ``date`` column (hourly), the variates, the target ``OT`` last."""
    g = torch.Generator().manual_seed(0)
    t = torch.arange(rows, dtype=torch.float64)
    columns = [torch.sin(t / (3 + i)) + 0.1 * torch.randn(rows, generator=g, dtype=torch.float64) for i in range(variates)]
    lines = ["date," + ",".join([f"v{i}" for i in range(variates - 1)] + ["OT"])]
    for r in range(rows):
        stamp = f"2016-07-{1 + r // 24:02d} {r % 24:02d}:00:00"
        lines.append(stamp + "," + ",".join(f"{float(c[r]):.6f}" for c in columns))
    path.write_text("\n".join(lines) + "\n")


def run_py(root: Path, data: Path, model: str, *extra: str) -> subprocess.CompletedProcess:
    args = ["--task_name", "long_term_forecast", "--is_training", "1", "--model", model, "--data", "custom",
            "--root_path", str(data.parent), "--data_path", data.name, "--features", "M", "--seq_len", "24",
            "--label_len", "12", "--pred_len", "8", "--enc_in", "3", "--dec_in", "3", "--c_out", "3",
            "--d_model", "16", "--n_heads", "2", "--e_layers", "1", "--d_layers", "1", "--d_ff", "32",
            "--train_epochs", "1", "--batch_size", "16", *extra]
    return subprocess.run([sys.executable, "run.py", *args], cwd=root, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("model", ["PatchTST", "Transformer"])
def test_run_py_trains_one_epoch_with_a_decay(repos, tmp_path, model):
    data = tmp_path / "small.csv"
    write_csv(data)
    done = run_py(repos.patched, data, model, "--attn_decay_type", "powerLaw", "--attn_decay_scale", "0.5",
                  "--train_attn_decay")
    assert done.returncode == 0, done.stderr
    assert "'attn_decay_type': 'powerLaw'" in done.stdout and "'train_attn_decay': True" in done.stdout
    loss = float(done.stdout.split("Train Loss:")[1].split()[0])
    assert math.isfinite(loss)
    bad = run_py(repos.patched, data, model, "--attn_decay_type", "exponential")
    assert bad.returncode != 0 and "attn_decay_type must be one of" in bad.stderr


# --- the engine's contract ---------------------------------------------------------------------------------------


@pytest.fixture
def tsl(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return lookalike_repo(LOOK, tmp_path / "Time-Series-Library")


def test_inject_again_is_already_applied_and_revert_is_byte_identical(tsl):
    before = snapshot(tsl)
    assert engine.inject(tsl, "wcmha").status == "applied"
    first = snapshot(tsl)
    assert engine.inject(tsl, "wcmha").status == "already applied" and snapshot(tsl) == first
    text = (tsl / ATTENTION).read_text()
    assert text.count("PowerformerDecay(") == 1 and text.count("attn_decay_mask = ") == 1
    assert text.count("attn_decay_type=getattr(configs") == 1  # Crossformer's time stage only
    transformer = (tsl / "models/Transformer.py").read_text()
    assert transformer.count("attn_decay_type=getattr(configs, ") == 2  # encoder and decoder self-attention
    assert cli.main(["--target", str(tsl), "--feature", "wcmha", "--revert"]) == 0
    assert snapshot(tsl) == before and git.Repo(tsl).git.status("--porcelain") == ""


def test_the_patch_applies_to_a_fresh_clone(tsl, tmp_path):
    patch = tmp_path / "x.patch"
    assert cli.main(["--target", str(tsl), "--feature", "wcmha", "--patch-out", str(patch)]) == 0
    fresh = tmp_path / "fresh"
    git.Repo.clone_from(tsl, fresh)
    subprocess.run(["git", "apply", "--check", str(patch)], cwd=fresh, check=True)
    subprocess.run(["git", "apply", str(patch)], cwd=fresh, check=True)
    assert snapshot(fresh) == snapshot(tsl)
    assert engine.inject(fresh, "wcmha", patch_out=tmp_path / "y.patch").status == "already applied"


def test_a_fault_mid_write_restores_every_file(tsl, monkeypatch):
    before = snapshot(tsl)
    real, calls = transaction._replace, []

    def faulty(src, dst):
        calls.append(dst)
        if len(calls) == 5:
            raise OSError("disk full")
        real(src, dst)

    monkeypatch.setattr(transaction, "_replace", faulty)
    with pytest.raises(OSError):
        engine.inject(tsl, "wcmha")
    assert len(calls) > 5 and snapshot(tsl) == before and not (tsl / ".git/tsattn").exists()


@pytest.mark.parametrize("path, old, new, symbol", [
    (ATTENTION, "A = self.dropout(torch.softmax(scale * scores, dim=-1))", "A = self.dropout(scores.softmax(-1))",
     "torch.softmax(scale * scores, dim=-1)"),
    ("models/PatchTST.py", "FullAttention(False,", "FullAttention2(False,", "FullAttention"),
    ("run.py", "'--factor'", "'--attn_factor'", "--factor"),
])
def test_a_missing_anchor_names_file_and_symbol_and_nothing_is_written(tsl, capsys, path, old, new, symbol):
    file = tsl / path
    text = file.read_text()
    assert old in text
    file.write_text(text.replace(old, new))
    commit_all(tsl, "edit")
    before = snapshot(tsl)
    assert cli.main(["--target", str(tsl), "--feature", "wcmha"]) == 3
    err = capsys.readouterr().err
    assert path in err and symbol in err
    assert snapshot(tsl) == before


def test_list_shows_the_time_series_library_column(capsys):
    assert cli.main(["--list"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    column = header.index("time_series_library")
    row = next(line.split() for line in out.splitlines() if line.split()[:1] == ["wcmha"])
    assert row[column] == "yes"
    assert "layers/SelfAttention_Family.py defining class FullAttention, AttentionLayer, TwoStageAttentionLayer" in out


# --- the recipe's own codemods -----------------------------------------------------------------------------------


def test_set_attention_keywords_skips_cross_attention_by_keyword_and_keeps_the_layout():
    from tsattn.injector.codemods import Code
    from tsattn.injector.recipe import Edit
    from tsattn.injector.recipes.time_series_library_wcmha import SetAttentionKeywords

    source = (
        "class Model:\n"
        "    def __init__(self, configs):\n"
        "        self.layer = DecoderLayer(self_attention=AttentionLayer(FullAttention(True,\n"
        "                                                                              factor=1)),\n"
        "                                  cross_attention=AttentionLayer(FullAttention(False)))\n"
        "        self.other = FullAttention(False)\n"
    )

    def run(text, value):
        edit = Edit("m.py", SetAttentionKeywords, callee="FullAttention", scope="Model.__init__",
                    keywords={"a": Code("getattr(configs, 'a', None)"), "b": value},
                    skip=(("DecoderLayer", 1, "cross_attention"),))
        return engine.apply_edits("m.py", text.encode(), [edit]).decode()

    once = run(source, 1)
    assert once == (  # the file has no string literal: the new ones take double quotes
        "class Model:\n"
        "    def __init__(self, configs):\n"
        "        self.layer = DecoderLayer(self_attention=AttentionLayer(FullAttention(True,\n"
        "                                                                              factor=1,\n"
        "                                                                              a=getattr(configs, \"a\", None),\n"
        "                                                                              b=1)),\n"
        "                                  cross_attention=AttentionLayer(FullAttention(False)))\n"
        "        self.other = FullAttention(False, a=getattr(configs, \"a\", None), b=1)\n"
    )
    assert run(once, 1) == once  # idempotent
    assert run(once, 2) == once.replace("b=1", "b=2")  # a new value is updated in place
