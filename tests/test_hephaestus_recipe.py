"""The hephaestus recipes (efficient, local, sparse, featurewise, chunked, flash, wcmha) on the Hephaestus look-alike:
today's model by default, the invariants between types, every type trains, the factory's errors, the templates'
public API (seed 003), and the engine's contract (idempotent, revert, fresh clone, rollback, features add up)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import types
from pathlib import Path

import git
import pytest
import torch

from tsattn.examples import import_from, lookalike_repo
from tsattn.export.hephaestus import HephaestusExportConfig, time_series_config
from tsattn.injector import cli, engine, transaction
from tsattn.injector.recipes.hephaestus_efficient import ATTENTION_TYPES, EFFICIENT_TYPES, FEATURE_TYPES

from repo_checks import commit_all, snapshot, third_party_imports

LOOK = "hephaestus_lookalike"
MODELS = "hephaestus/timeseries_models/models.py"
FEATURES = list(FEATURE_TYPES)
D_MODEL, HEADS, SEQ = 16, 2, 10
# keywords that make each type differ from standard at SEQ positions (and a valid per-column featurewise)
KWARGS = {
    "standard": {},
    "local": {"window_size": 3, "block_size": 4},
    "sparse": {"stride": 3, "local_window": 2, "block_size": 4},
    "featurewise": {"share_weights": False, "n_columns": 4},
    "chunked": {"chunk_size": 4, "overlap": 1},
    "flash": {},
    "wcmha": {"alpha": 0.8},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py: tiny models


def load(root: Path) -> types.SimpleNamespace:
    models = import_from(root, "hephaestus.timeseries_models.models")
    out = types.SimpleNamespace(root=root, models=models, Decoder=models.TimeSeriesDecoder,
                                Transformer=models.TimeSeriesTransformer,
                                Tabular=import_from(root, "hephaestus.training.training").TabularDecoder)
    if (root / "hephaestus/timeseries_models/efficient_transformer.py").is_file():
        out.efficient = import_from(root, "hephaestus.timeseries_models.efficient_transformer")
    return out


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("heph")
    out = {"base": lookalike_repo(LOOK, root / "base")}
    for feature in ("efficient", "local"):
        out[feature] = lookalike_repo(LOOK, root / feature)
        engine.inject(out[feature], feature, patch_out=root / f"{feature}.patch")
    assert not [m for m in sys.modules if m.split(".")[0] == "hephaestus"]  # the target was never imported
    return {name: load(path) for name, path in out.items()}


def config(repo, categorical: int = 1):
    cfg = HephaestusExportConfig.from_options({"numeric_columns": 3, "categorical_columns": categorical,
                                               "object_tokens": 5}, "efficient", with_checkpoint=False)
    g = torch.Generator().manual_seed(3)
    reservoir = torch.randint(1, 50, (len(cfg.tokens), 8), generator=g)
    return time_series_config(repo.models.TimeSeriesConfig, cfg, reservoir, 50), cfg


def build(repo, seed=0, categorical=1, **kwargs):
    cfg, _ = config(repo, categorical)
    torch.manual_seed(seed)
    return repo.Decoder(cfg, D_MODEL, HEADS, **kwargs).eval()


def inputs(repo, batch=2, seq=SEQ, categorical=1, seed=0, nan=True):
    cfg, spec = config(repo, categorical)
    g = torch.Generator().manual_seed(seed)
    numeric = torch.randn(batch, 3, seq, generator=g)
    if nan:
        numeric[0, 1, 4] = float("nan")
    ids = torch.tensor([spec.tokens.index(t) for t in spec.object_tokens], dtype=torch.float32)
    cat = ids[torch.randint(0, len(ids), (batch, categorical, seq), generator=g)] if categorical else None
    return numeric, cat


def outputs(model, x):
    out = model(*x)
    return out.numeric, out.categorical


def max_diff(a, b) -> float:
    return max(float((u - v).abs().max()) for u, v in zip(a, b) if u is not None)


# --- today's model by default -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("feature", ["efficient", "local"])
@pytest.mark.parametrize("explicit", [False, True], ids=["defaults", "attention_type=standard"])
def test_standard_is_the_unpatched_model_bit_for_bit(repos, feature, explicit):
    kwargs = {"attention_type": "standard", "n_layers": 4, "attention_kwargs": None} if explicit else {}
    base, patched = build(repos["base"], seed=5), build(repos[feature], seed=5, **kwargs)
    assert list(patched.state_dict()) == list(base.state_dict())
    assert all(torch.equal(patched.state_dict()[k], v) for k, v in base.state_dict().items())
    x = inputs(repos["base"])
    with torch.no_grad():
        for a, b in zip(outputs(base, x), outputs(patched, x)):
            assert torch.equal(a, b)
        base.train(), patched.train()  # dropout draws the same numbers in the same order
        torch.manual_seed(1)
        a = outputs(base, x)
        torch.manual_seed(1)
        b = outputs(patched, x)
        assert all(torch.equal(u, v) for u, v in zip(a, b))
        # without categorical inputs too
        base.eval(), patched.eval()
        x1 = inputs(repos["base"], categorical=0)
        assert torch.equal(build(repos["base"], 5, 0)(*x1).numeric, build(repos[feature], 5, 0, **kwargs)(*x1).numeric)


def test_tabular_decoder_threads_the_arguments(repos):
    cfg, _ = config(repos["efficient"])
    torch.manual_seed(0)
    base = repos["base"].Tabular(cfg, D_MODEL, HEADS)
    torch.manual_seed(0)
    same = repos["efficient"].Tabular(cfg, D_MODEL, HEADS)
    assert all(torch.equal(same.state_dict()[k], v) for k, v in base.state_dict().items())
    model = repos["efficient"].Tabular(cfg, D_MODEL, HEADS, n_layers=2, attention_type="local",
                                       attention_kwargs={"window_size": 5})
    tst = model.model.time_series_transformer
    assert (model.model.n_layers, tst.n_layers, len(tst.transformer_block_chain)) == (2, 2, 1)
    attn = tst.transformer_block_chain[0].multi_head_attention
    assert type(attn).__name__ == "LocalAttention" and attn.window_size == 5
    assert tst.transformer_block_0.attention_type == "local" and tst.transformer_block_0.attention_kwargs == {"window_size": 5}


@pytest.mark.parametrize("n_layers", [1, 2, 6])
def test_n_layers_builds_that_many_blocks(repos, n_layers):
    model = build(repos["efficient"], n_layers=n_layers, attention_type="flash")
    assert 1 + len(model.time_series_transformer.transformer_block_chain) == n_layers
    numeric, cat = outputs(model, inputs(repos["efficient"]))
    assert numeric.shape == (2, 3, SEQ) and cat.shape == (2, 1, SEQ, len(config(repos["efficient"])[1].tokens))


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_bad_n_layers_fails_at_construction(repos, bad):
    with pytest.raises(ValueError, match=re.escape(f"n_layers must be an integer >= 1; got {bad!r}")):
        build(repos["efficient"], n_layers=bad)


def test_an_unpatched_checkpoint_loads_into_every_type(repos):
    state = build(repos["base"], seed=2).state_dict()
    for attention_type in ATTENTION_TYPES:
        kwargs = {k: v for k, v in KWARGS[attention_type].items() if k not in ("share_weights", "n_columns")}
        model = build(repos["efficient"], seed=9, attention_type=attention_type, attention_kwargs=kwargs)
        model.load_state_dict(state)  # strict; wcmha keeps its configured decay
        assert torch.equal(model.state_dict()["time_series_transformer.transformer_block_0.multi_head_attention."
                                              "q_proj.weight"],
                           state["time_series_transformer.transformer_block_0.multi_head_attention.q_proj.weight"])


# --- invariants between types -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def standard(repos):
    model = build(repos["efficient"], seed=4)
    x = inputs(repos["efficient"], seed=1)
    with torch.no_grad():
        return x, outputs(model, x)


@pytest.mark.parametrize("attention_type, kwargs", [
    ("flash", {}),
    ("local", {"window_size": SEQ}),
    ("local", {"window_size": 50, "block_size": 3}),
    ("wcmha", {"alpha": 0.0}),
    ("featurewise", {"share_weights": True}),
    ("chunked", {"chunk_size": SEQ, "overlap": 0}),
    ("sparse", {"stride": 1, "local_window": 1}),
], ids=["flash", "local-window=seq", "local-window>seq", "wcmha-alpha=0", "featurewise-shared", "chunked-one-chunk",
        "sparse-stride=1"])
def test_types_that_reduce_to_standard_equal_it(repos, standard, attention_type, kwargs):
    x, want = standard
    model = build(repos["efficient"], seed=4, attention_type=attention_type, attention_kwargs=kwargs)
    with torch.no_grad():
        got = outputs(model, x)
    assert max_diff(got, want) <= 1e-5


@pytest.mark.parametrize("attention_type", [t for t in EFFICIENT_TYPES if t != "flash"])  # flash is standard
def test_each_type_with_its_keywords_differs_from_standard(repos, standard, attention_type):
    x, want = standard
    kwargs = KWARGS[attention_type]
    model = build(repos["efficient"], seed=4, attention_type=attention_type, attention_kwargs=kwargs)
    if attention_type == "featurewise":  # per-column projections: give them the standard weights
        state = build(repos["efficient"], seed=4).state_dict()
        mine = model.state_dict()
        for key in mine:
            m = re.match(r"(.*multi_head_attention\.(?:q|k|v|out)_proj)\.\d+\.(weight|bias)$", key)
            mine[key] = state[f"{m.group(1)}.{m.group(2)}"] if m else state[key]
        model.load_state_dict(mine)
        with torch.no_grad():
            assert max_diff(outputs(model, x), want) <= 1e-5  # the same weights in every column: standard
            model.time_series_transformer.transformer_block_0.multi_head_attention.q_proj[1].weight.mul_(1.5)
    with torch.no_grad():
        assert max_diff(outputs(model, x), want) > 1e-4


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_every_type_runs_forward_and_backward_through_the_decoder(repos, attention_type):
    model = build(repos["efficient"], attention_type=attention_type, attention_kwargs=KWARGS[attention_type],
                  n_layers=2).train()
    numeric, cat = outputs(model, inputs(repos["efficient"], batch=3))
    assert torch.isfinite(numeric).all() and torch.isfinite(cat).all()
    (numeric.square().mean() + cat.logsumexp(-1).mean()).backward()
    for block in (model.time_series_transformer.transformer_block_0,
                  model.time_series_transformer.transformer_block_chain[0]):
        grads = [p.grad for p in block.multi_head_attention.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(float(g.abs().sum()) > 0 for g in grads)


# --- the factory's errors ------------------------------------------------------------------------------------------


def test_unknown_attention_type_fails_at_construction_listing_the_valid_names(repos):
    valid = str(list(ATTENTION_TYPES))
    with pytest.raises(ValueError, match=re.escape(f"unknown attention_type 'linear'; valid types: {valid}")):
        build(repos["efficient"], attention_type="linear")
    with pytest.raises(ValueError, match=re.escape("unknown keyword(s) ['window'] for attention_type='local'")):
        build(repos["efficient"], attention_type="local", attention_kwargs={"window": 3})
    with pytest.raises(ValueError, match="window_size must be an integer >= 1"):
        build(repos["efficient"], attention_type="local", attention_kwargs={"window_size": 0})


def test_a_per_type_feature_accepts_standard_and_its_type_only(repos):
    local = repos["local"]
    assert local.models.ENABLED_ATTENTION_TYPES == ("standard", "local")
    build(local, attention_type="local", attention_kwargs={"window_size": 4})
    with pytest.raises(ValueError, match=re.escape(
            "attention_type 'sparse' is not enabled in this repository (tsattn-inject --feature sparse, or --feature "
            "efficient, adds it); valid types: ['standard', 'local']")):
        build(local, attention_type="sparse")
    with pytest.raises(ValueError, match=re.escape("unknown attention_type 'x'; valid types: ['standard', 'local']")):
        build(local, attention_type="x")


# --- the templates' public API (seed 003) -------------------------------------------------------------------------


def test_efficient_time_series_transformer_is_a_drop_in_as_the_guide_uses_it(repos):
    r = repos["efficient"]
    Efficient = r.efficient.EfficientTimeSeriesTransformer

    class EfficientTimeSeriesDecoder(r.Decoder):  # the guide's "Using with TimeSeriesDecoder", verbatim in spirit
        def __init__(self, config, d_model=64, n_heads=4, attention_type="local", attention_kwargs=None):
            super().__init__(config, d_model, n_heads)
            self.time_series_transformer = Efficient(config=config, d_model=d_model, n_heads=n_heads,
                                                     attention_type=attention_type,
                                                     attention_kwargs=attention_kwargs or {"window_size": 256})

    cfg, _ = config(r)
    model = EfficientTimeSeriesDecoder(cfg, D_MODEL, HEADS, attention_type="sparse",
                                       attention_kwargs={"stride": 2, "local_window": 2}).eval()
    assert type(model.time_series_transformer.transformer_block_0.multi_head_attention).__name__ == "SparseAttention"
    numeric, _ = outputs(model, inputs(r))
    assert numeric.shape == (2, 3, SEQ) and torch.isfinite(numeric).all()
    default = Efficient(cfg, d_model=D_MODEL, n_heads=HEADS)
    assert default.attention_type == "flash" and len(default.transformer_block_chain) == 3
    with pytest.raises(ValueError, match="not enabled"):
        repos["local"].efficient.EfficientTimeSeriesTransformer(cfg, d_model=D_MODEL, n_heads=HEADS)


def test_benchmark_attention_mechanisms_follows_the_guide(repos):
    results = repos["local"].efficient.benchmark_attention_mechanisms(
        seq_lengths=[8, 16], n_columns=2, d_model=8, n_heads=2, batch_size=1, device="cpu", repeats=1)
    assert list(results) == [8, 16]
    for per_method in results.values():
        assert list(per_method) == ["standard", "local"]  # the types this clone enables
        assert all(m["successful"] and m["time_ms"] > 0 for m in per_method.values())


def test_the_patched_repository_needs_no_new_package(repos):
    own = {"hephaestus"}
    assert third_party_imports(repos["base"].root, own) == third_party_imports(repos["efficient"].root, own) == {"torch"}


# --- the engine's contract ------------------------------------------------------------------------------------------


@pytest.fixture
def heph(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return lookalike_repo(LOOK, tmp_path / "Hephaestus")


def test_inject_again_is_already_applied_and_revert_is_byte_identical(heph):
    before = snapshot(heph)
    result = engine.inject(heph, "efficient")
    assert result.status == "applied" and set(result.changed) == {MODELS, "hephaestus/training/training.py"}
    assert set(result.added) == {f"hephaestus/timeseries_models/{n}" for n in
                                 ("efficient_attention.py", "efficient_transformer.py", "wcmha.py")}
    first = snapshot(heph)
    assert engine.inject(heph, "efficient").status == "already applied" and snapshot(heph) == first
    text = (heph / MODELS).read_text()
    assert text.count("def build_attention") == 1 and text.count("ENABLED_ATTENTION_TYPES = ") == 1
    assert "MultiHeadAttention4D(" not in text.split("class TransformerBlock")[1]
    assert cli.main(["--target", str(heph), "--feature", "efficient", "--revert"]) == 0
    assert snapshot(heph) == before and git.Repo(heph).git.status("--porcelain") == ""


@pytest.mark.parametrize("feature", FEATURES)
def test_every_feature_injects_and_its_patch_applies_to_a_fresh_clone(tmp_path, feature):
    target = lookalike_repo(LOOK, tmp_path / "a")
    patch = tmp_path / "x.patch"
    assert cli.main(["--target", str(target), "--feature", feature, "--patch-out", str(patch)]) == 0
    enabled = ast.literal_eval(re.search(r"ENABLED_ATTENTION_TYPES = (\(.*\))", (target / MODELS).read_text()).group(1))
    assert enabled == ("standard",) + FEATURE_TYPES[feature]
    fresh = tmp_path / "fresh"
    git.Repo.clone_from(target, fresh)
    subprocess.run(["git", "apply", str(patch)], cwd=fresh, check=True)
    assert snapshot(fresh) == snapshot(target)
    assert engine.inject(fresh, feature, patch_out=tmp_path / "y.patch").status == "already applied"


def test_a_fault_mid_write_restores_every_file(heph, monkeypatch):
    before = snapshot(heph)
    real, calls = transaction._replace, []

    def faulty(src, dst):
        calls.append(dst)
        if len(calls) == 4:
            raise OSError("disk full")
        real(src, dst)

    monkeypatch.setattr(transaction, "_replace", faulty)
    with pytest.raises(OSError):
        engine.inject(heph, "efficient")
    assert len(calls) > 4 and snapshot(heph) == before and not (heph / ".git/tsattn").exists()


def test_features_add_up_and_reverting_the_last_restores_the_first(heph):
    engine.inject(heph, "local")
    commit_all(heph, "local")
    after_local = snapshot(heph)
    result = engine.inject(heph, "sparse")
    assert result.changed == [MODELS]  # the templates are already there, byte for byte
    repo = load(heph)
    assert repo.models.ENABLED_ATTENTION_TYPES == ("standard", "local", "sparse")
    build(repo, attention_type="sparse", attention_kwargs={"stride": 2, "local_window": 2})
    build(repo, attention_type="local", attention_kwargs={"window_size": 2})
    commit_all(heph, "sparse")
    assert engine.inject(heph, "efficient").changed == [MODELS]
    assert load(heph).models.ENABLED_ATTENTION_TYPES == (
        "standard", "local", "sparse", "featurewise", "chunked", "flash", "wcmha")
    engine.revert(heph, "efficient")
    engine.revert(heph, "sparse")
    assert snapshot(heph) == after_local


def test_a_missing_anchor_names_file_and_symbol_and_nothing_is_written(heph, capsys):
    path = heph / MODELS
    path.write_text(path.read_text().replace("for i in range(1, 4)", "for i in range(1, 6)"))
    commit_all(heph)
    before = snapshot(heph)
    assert cli.main(["--target", str(heph), "--feature", "efficient"]) == 3
    err = capsys.readouterr().err
    assert MODELS in err and "range(1, 4)" in err and "TimeSeriesTransformer.__init__" in err
    assert snapshot(heph) == before


def test_list_shows_the_hephaestus_column(capsys):
    assert cli.main(["--list"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header[0] == "feature" and "hephaestus" in header
    column = header.index("hephaestus")
    for feature in FEATURES:
        row = next(line.split() for line in out.splitlines() if line.split()[:1] == [feature])
        assert row[column] == "yes", row
        assert f"hephaestus/{feature}" in out
    calf_only = next(line.split() for line in out.splitlines() if line.split()[:1] == ["ahs"])
    assert calf_only[column] == "-"
    assert "hephaestus/timeseries_models/models.py defining class TransformerBlock, TimeSeriesTransformer, " \
           "TimeSeriesDecoder" in out


def test_the_demo_step_runs_and_checks_what_it_claims():
    import argparse

    from tsattn import demo

    assert demo.step_hephaestus in [fn for _, fn in demo.STEPS]
    out = demo.step_hephaestus(argparse.Namespace(length=256))
    assert "default (standard) bit-identical to the unpatched model" in out and "equals one forward" in out
