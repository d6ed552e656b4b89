"""The patchtst/wcmha recipe on the PatchTST look-alike: no decay is today's model bit for bit, every decay equals
an oracle of the Powerformer authors' attention (float64, masks from tests/test_powerformer_decay.py's reference)
with residual scores on and off, unpatched checkpoints load, run_longExp.py trains one epoch on a CSV, and the
engine's contract (idempotent, option updates in place, transactional, byte-identical revert, patch applies).

The same comparison against the authors' own models/Powerformer.py on a fresh upstream clone is done by hand
(see the recipe's README notes): it needs both upstream repositories, which the tests do not have."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import git
import pytest
import torch
import torch.nn.functional as F

from tsattn.examples import imports_from, lookalike_repo
from tsattn.injector import cli, engine, transaction
from tsattn.injector.errors import UsageError
from tsattn.injector.recipes.patchtst_wcmha import BACKBONE, DECAY_MODULE, MODEL, RUN
from tsattn.injector.targets import detect
from tsattn.modules import powerformer_decay

from repo_checks import commit_all, snapshot, third_party_imports
from test_powerformer_decay import reference

LOOK = "patchtst_lookalike"
SUB = "PatchTST_supervised"
SEQ, PRED, CH = 40, 8, 3  # patch_len 8, stride 4, padding 'end': 10 patches


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def load(root: Path) -> types.SimpleNamespace:
    with imports_from(root / SUB) as imp:
        backbone = imp("layers.PatchTST_backbone")  # first: models.PatchTST imports it (one copy per block)
        model = imp("models.PatchTST")
    return types.SimpleNamespace(root=root, Model=model.Model, SDPA=backbone._ScaledDotProductAttention)


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("patchtst")
    base = lookalike_repo(LOOK, root / "base")
    patched = lookalike_repo(LOOK, root / "patched")
    engine.inject(patched, "wcmha", patch_out=root / "x.patch")
    return {"base": load(base), "patched": load(patched)}


def configs(**kw) -> types.SimpleNamespace:
    base = dict(enc_in=CH, seq_len=SEQ, pred_len=PRED, e_layers=3, n_heads=2, d_model=8, d_ff=16, dropout=0.2,
                head_dropout=0.0, patch_len=8, stride=4, padding_patch="end", revin=1, decomposition=0,
                kernel_size=5)
    base.update(kw)
    return types.SimpleNamespace(**base)


def series(batch=3, seed=0):
    return torch.randn(batch, SEQ, CH, generator=torch.Generator().manual_seed(seed))


# --- no decay: today's model ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("res_attention", [True, False])
@pytest.mark.parametrize("decomposition", [0, 1])
@pytest.mark.parametrize("given", ["absent", "none", "None"])
def test_no_decay_is_the_unpatched_model_bit_for_bit(repos, res_attention, decomposition, given):
    extra = {} if given == "absent" else {"attn_decay_type": given, "attn_decay_scale": 0.0, "train_attn_decay": False}
    cfg, cfg_base = configs(decomposition=decomposition, **extra), configs(decomposition=decomposition)
    torch.manual_seed(1)
    base = repos["base"].Model(cfg_base, res_attention=res_attention)
    torch.manual_seed(1)
    patched = repos["patched"].Model(cfg, res_attention=res_attention)
    assert list(patched.state_dict()) == list(base.state_dict())
    assert all(torch.equal(patched.state_dict()[k], v) for k, v in base.state_dict().items())
    x = series()
    for training in (False, True):  # with dropout: the same random stream
        base.train(training), patched.train(training)
        torch.manual_seed(2)
        a = base(x)
        torch.manual_seed(2)
        assert torch.equal(patched(x), a)


def test_unpatched_checkpoints_load(repos):
    state = repos["base"].Model(configs()).state_dict()
    for kind, scale in [("causal", 0), ("step", 2), ("butter1", 4.0), ("butter2", 4.0), ("powerlaw", 0.5),
                        ("simpowerlaw", 0.5)]:
        repos["patched"].Model(configs(attn_decay_type=kind, attn_decay_scale=scale)).load_state_dict(state, strict=True)
    model = repos["patched"].Model(configs(attn_decay_type="powerlaw", attn_decay_scale=0.5, train_attn_decay=True))
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    assert sorted(result.missing_keys) == [f"model.backbone.encoder.layers.{i}.self_attn.sdp_attn.attn_decay.scale"
                                           for i in range(3)]  # the only new state: one scalar per layer


# --- every decay against an oracle of the authors' attention ----------------------------------------------------------


def oracle_attention(kind, scale):
    """The authors' _ScaledDotProductAttention, in float64: scores = q k * scale (+ prev) + decay, then softmax;
    with res_attention the scores, decay included, go on to the next layer."""

    def forward(self, q, k, v, prev=None, key_padding_mask=None, attn_mask=None):
        scores = torch.matmul(q.double(), k.double()) * self.scale.double()
        if prev is not None:
            scores = scores + prev
        scores = scores + reference(kind, scale, scores.shape[-2], scores.shape[-1])
        weights = F.softmax(scores, dim=-1)
        out = torch.matmul(weights, v.double()).to(q.dtype)
        return (out, weights, scores) if self.res_attention else (out, weights)

    return forward


CASES = [("causal", 0.0), ("step", 1.0), ("step", 3.0), ("butter1", 3.0), ("butter1", 9.0), ("butter2", 3.0),
         ("butter2", 9.0), ("powerLaw", 0.5), ("powerlaw", 1.0), ("simpowerlaw", 0.5), ("SimPowerLaw", 1.5)]


CASES += [(kind, scale, True) for kind, scale in CASES if kind.lower() in ("powerlaw", "simpowerlaw")]


@pytest.mark.parametrize("kind,scale,train", [c if len(c) == 3 else (*c, False) for c in CASES])
@pytest.mark.parametrize("res_attention", [True, False])
def test_every_decay_equals_the_oracle(repos, kind, scale, train, res_attention):
    cfg = configs(attn_decay_type=kind, attn_decay_scale=scale, train_attn_decay=train)
    torch.manual_seed(3)
    patched = repos["patched"].Model(cfg, res_attention=res_attention).eval()
    if train:  # a trained value, different per layer (the oracle gets each layer's own)
        with torch.no_grad():
            for i, layer in enumerate(patched.model.backbone.encoder.layers):
                layer.self_attn.sdp_attn.attn_decay.scale.add_(0.1 * (i + 1) * (-1 if kind.lower() == "powerlaw" else 1))
    oracle = repos["base"].Model(configs(), res_attention=res_attention).eval()
    oracle.load_state_dict(patched.state_dict(), strict=False)
    for layer, theirs in zip(oracle.model.backbone.encoder.layers, patched.model.backbone.encoder.layers):
        value = theirs.self_attn.sdp_attn.attn_decay.scale.item() if train else scale
        value = -value if train and kind.lower() == "powerlaw" else value  # the reference takes s; powerlaw trains -|s|
        sdpa = layer.self_attn.sdp_attn
        sdpa.forward = types.MethodType(oracle_attention(kind, value), sdpa)
    x = series()
    with torch.no_grad():
        got, want = patched(x), oracle(x)
        plain = repos["base"].Model(configs(), res_attention=res_attention).eval()
        plain.load_state_dict(oracle.state_dict())
        without = plain(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got - without).abs().max() > 1e-2  # the decay does change the forecast


def test_a_decay_switches_attention_dropout_off(repos):
    model = repos["patched"].Model(configs(attn_decay_type="powerlaw", attn_decay_scale=0.5), attn_dropout=0.3)
    sdpa = model.model.backbone.encoder.layers[0].self_attn.sdp_attn
    assert isinstance(sdpa.attn_dropout, torch.nn.Identity)
    plain = repos["patched"].Model(configs(), attn_dropout=0.3).model.backbone.encoder.layers[0].self_attn.sdp_attn
    assert isinstance(plain.attn_dropout, torch.nn.Dropout) and plain.attn_dropout.p == 0.3


def test_trained_scale_gets_gradients_and_bad_values_fail_at_construction(repos):
    model = repos["patched"].Model(configs(attn_decay_type="simpowerlaw", attn_decay_scale=0.5, train_attn_decay=True))
    model(series()).square().mean().backward()
    scales = [p for n, p in model.named_parameters() if n.endswith("attn_decay.scale")]
    assert len(scales) == 3 and all(p.grad is not None and p.grad.abs() > 0 for p in scales)
    for bad in [dict(attn_decay_type="step", attn_decay_scale=0.5), dict(attn_decay_type="gauss"),
                dict(attn_decay_type="causal", train_attn_decay=True)]:
        with pytest.raises(ValueError, match="attn_decay"):
            repos["patched"].Model(configs(**bad))


# --- run_longExp.py -------------------------------------------------------------------------------------------------


def write_csv(path: Path, rows=160, variables=("HUFL", "MUFL", "OT")) -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.arange(rows, dtype=torch.float64)
    lines = ["date," + ",".join(variables)]
    for i in range(rows):
        values = [torch.sin(t[i] / (4 + j)).item() + 0.1 * torch.randn(1, generator=g).item() for j in range(len(variables))]
        lines.append(f"2016-07-{1 + i // 24:02d} {i % 24:02d}:00:00," + ",".join(f"{v:.6f}" for v in values))
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("train", [False, True])
def test_run_longexp_trains_one_epoch_with_powerlaw(repos, tmp_path, train):
    write_csv(tmp_path / "small.csv")
    work = repos["patched"].root / SUB
    args = [sys.executable, "run_longExp.py", "--is_training", "1", "--model_id", "t", "--model", "PatchTST",
            "--data", "custom", "--root_path", str(tmp_path), "--data_path", "small.csv", "--enc_in", "3",
            "--seq_len", "48", "--pred_len", "12", "--e_layers", "3", "--patch_len", "8", "--stride", "4", "--train_epochs", "1",
            "--batch_size", "16", "--learning_rate", "0.01", "--checkpoints", str(tmp_path / "ck"),
            "--attn_decay_type", "powerLaw", "--attn_decay_scale", "0.5"] + (["--train_attn_decay"] if train else [])
    done = subprocess.run(args, cwd=work, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "attn_decay_type='powerlaw'" in done.stdout and f"train_attn_decay={train}" in done.stdout
    epoch = [line for line in done.stdout.splitlines() if line.startswith("Epoch: 1")]
    assert len(epoch) == 1 and "nan" not in epoch[0].lower(), done.stdout
    state = torch.load(tmp_path / "ck" / "t_checkpoint.pth")
    scales = {k: v for k, v in state.items() if k.endswith("attn_decay.scale")}
    if train:  # trained: moved away from the initial -|0.5|
        assert len(scales) == 3 and all(abs(v.item() + 0.5) > 1e-6 for v in scales.values())
    else:
        assert not scales
    bad = subprocess.run(args[:-4 - train] + ["--attn_decay_type", "gauss"], cwd=work, capture_output=True, text=True)
    assert bad.returncode == 2 and "--attn_decay_type" in bad.stderr


# --- the engine's contract --------------------------------------------------------------------------------------------


@pytest.fixture
def look(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return lookalike_repo(LOOK, tmp_path / "PatchTST")


def test_detected_as_patchtst(look):
    assert detect(look) == "patchtst"


def test_inject_again_is_already_applied_and_revert_is_byte_identical(look):
    before = snapshot(look)
    result = engine.inject(look, "wcmha")
    assert result.status == "applied" and set(result.changed) == {BACKBONE, MODEL, RUN}
    assert result.added == [DECAY_MODULE]
    assert (look / DECAY_MODULE).read_bytes() == Path(powerformer_decay.__file__).read_bytes()  # verbatim
    first = snapshot(look)
    assert engine.inject(look, "wcmha").status == "already applied" and snapshot(look) == first
    text = (look / BACKBONE).read_text()
    assert text.count("PowerformerDecay(") == 1 and text.count("attn_scores = attn_scores + attn_decay") == 1
    assert text.count("from layers.powerformer_decay import PowerformerDecay") == 1
    assert text.index("from layers.powerformer_decay") > text.index("from layers.PatchTST_layers import *")
    assert cli.main(["--target", str(look), "--feature", "wcmha", "--revert"]) == 0
    assert snapshot(look) == before and git.Repo(look).git.status("--porcelain") == ""


def test_new_option_values_update_the_code_in_place(look):
    before = snapshot(look)
    engine.inject(look, "wcmha", {"attn_decay_type": "powerlaw", "attn_decay_scale": 0.5})
    result = engine.inject(look, "wcmha", {"attn_decay_type": "butter2", "attn_decay_scale": 7.0})
    assert result.status == "updated" and set(result.changed) == {MODEL, RUN}
    run, model = (look / RUN).read_text(), (look / MODEL).read_text()
    assert run.count("'--attn_decay_type'") == 1 and "default='butter2'" in run and "default=7.0" in run
    assert "'powerlaw'," not in model and "getattr(configs, 'attn_decay_type', 'butter2')" in model
    assert "getattr(configs, 'attn_decay_scale', 7.0)" in model and model.count("getattr(configs, 'attn_decay") == 2
    assert engine.inject(look, "wcmha").options == {"attn_decay_type": "butter2", "attn_decay_scale": 7.0}  # kept
    engine.revert(look, "wcmha")
    assert snapshot(look) == before


def exit_code(argv) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exc:  # argparse's own refusals (an invalid choice)
        return exc.code


@pytest.mark.parametrize("argv,match", [
    (["--attn_decay_type", "step", "--attn_decay_scale", "0.5"], "step width"),
    (["--attn_decay_type", "butter1"], "time scale"),
    (["--attn_decay_type", "gauss"], "invalid choice"),
])
def test_bad_options_are_refused_before_any_edit(look, capsys, argv, match):
    before = snapshot(look)
    assert exit_code(["--target", str(look), "--feature", "wcmha", *argv]) == 2
    assert match in capsys.readouterr().err and snapshot(look) == before


def test_bad_options_raise_usage_error(look):
    with pytest.raises(UsageError, match="attn_decay_scale"):
        engine.inject(look, "wcmha", {"attn_decay_type": "simpowerlaw", "attn_decay_scale": -1.0})


def test_the_patch_applies_to_a_fresh_clone_and_is_recognised_there(look, tmp_path):
    patch = tmp_path / "x.patch"
    assert cli.main(["--target", str(look), "--feature", "wcmha", "--attn_decay_type", "simpowerlaw",
                     "--attn_decay_scale", "0.25", "--patch-out", str(patch)]) == 0
    fresh = tmp_path / "fresh"
    git.Repo.clone_from(look, fresh)
    subprocess.run(["git", "apply", str(patch)], cwd=fresh, check=True)
    assert snapshot(fresh) == snapshot(look)
    result = engine.inject(fresh, "wcmha", patch_out=tmp_path / "y.patch")
    assert result.status == "already applied" and result.options_from == "code"
    assert result.options == {"attn_decay_type": "simpowerlaw", "attn_decay_scale": 0.25}


def test_a_fault_mid_write_restores_every_file(look, monkeypatch):
    before = snapshot(look)
    real, calls = transaction._replace, []

    def faulty(src, dst):
        calls.append(dst)
        if len(calls) == 4:  # the patch, two files of the target, then the fault
            raise OSError("disk full")
        real(src, dst)

    monkeypatch.setattr(transaction, "_replace", faulty)
    with pytest.raises(OSError):
        engine.inject(look, "wcmha")
    assert len(calls) >= 4 and snapshot(look) == before and not (look / ".git/tsattn").exists()


def test_a_missing_anchor_names_file_and_symbol_and_nothing_is_written(look, capsys):
    path = look / BACKBONE
    path.write_text(path.read_text().replace("        self.lsa = lsa\n", ""))
    commit_all(look, "no lsa")
    before = snapshot(look)
    assert cli.main(["--target", str(look), "--feature", "wcmha"]) == 3
    err = capsys.readouterr().err
    assert BACKBONE in err and "self.lsa = lsa" in err and "_ScaledDotProductAttention.__init__" in err
    assert snapshot(look) == before


def test_the_patched_repository_needs_no_new_package(repos):
    own = {"models", "layers"}
    assert third_party_imports(repos["base"].root, own) == third_party_imports(repos["patched"].root, own) \
        == {"torch", "numpy"}


def test_list_shows_the_patchtst_row(capsys):
    assert cli.main(["--list"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert "patchtst" in header
    row = next(line.split() for line in out.splitlines() if line.split()[:1] == ["wcmha"])
    assert row[header.index("patchtst")] == "yes"
    assert "PatchTST_supervised/layers/PatchTST_backbone.py defining class PatchTST_backbone" in out
