"""tsattn-export --target Hephaestus --feature F: the patched look-alike's TimeSeriesDecoder as a decode-step graph
with a KV cache.

The exported graphs are checked, step by step with the cache, against a TimeSeriesDecoder the test builds itself
(one full forward over the whole series, the user's checkpoint path), not only against the exporter's own eager
reference; every attention type's cached decoding is checked in eager against one forward.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from tsattn.examples import import_from, lookalike_repo
from tsattn.export import cli
from tsattn.export import hephaestus as heph
from tsattn.export.exporter import _stepwise, eager_runner
from tsattn.export.manifest import CacheSpec, ManifestError, load_manifest
from tsattn.injector import engine

from repo_checks import checked_manifest

LOCAL = ["--set", "attention_type=local", "--set", 'attention_kwargs={"window_size": 3}']
TYPES = {  # every type with keywords that matter over the stepwise check's 14 positions
    "standard": {},
    "flash": {},
    "local": {"window_size": 3, "decay": "powerlaw", "alpha": 0.5},
    "sparse": {"stride": 3, "local_window": 2},
    "featurewise": {"share_weights": False, "n_columns": 4},
    "chunked": {"chunk_size": 4, "overlap": 1},
    "wcmha": {"alpha": 0.8, "per_head_alpha": True},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("heph")
    base = lookalike_repo("hephaestus_lookalike", root / "base")
    patched = lookalike_repo("hephaestus_lookalike", root / "patched")
    engine.inject(patched, "efficient", patch_out=root / "e.patch")
    sparse = lookalike_repo("hephaestus_lookalike", root / "sparse")
    engine.inject(sparse, "sparse", patch_out=root / "s.patch")
    return types.SimpleNamespace(base=base, patched=patched, sparse=sparse)


def _run(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def local_export(repos, tmp_path_factory):
    out = tmp_path_factory.mktemp("e") / "heph"
    rc = cli.main(["--target", str(repos.patched), "--feature", "efficient", "--out", str(out), *LOCAL])
    return rc, out


def test_patched_lookalike_exports_a_cached_decoder_end_to_end(local_export, repos):
    rc, out = local_export
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "model.pt"]
    raw = checked_manifest(out)  # sha256 and sizes recomputed here, independently of tsattn
    graph = raw["graphs"]["model"]
    n_tokens = 5 + 3 + 4 + 1
    past = [{"name": f"past_key_values.{i}.{kv}", "dtype": "float32", "shape": ["batch", 8, "past", 8]}
            for i in range(2) for kv in ("key", "value")]
    assert graph["inputs"] == [{"name": "numeric_inputs", "dtype": "float32", "shape": ["batch", 3, "seq"]},
                               {"name": "categorical_inputs", "dtype": "float32", "shape": ["batch", 1, "seq"]}] + past
    assert [o["name"] for o in graph["outputs"]] == ["numeric", "categorical", "present.0.key", "present.0.value",
                                                     "present.1.key", "present.1.value"]
    assert graph["outputs"][1]["shape"] == ["batch", 1, "seq", n_tokens]
    assert graph["outputs"][2]["shape"] == ["batch", 8, "present", 8]
    cache = raw["cache"]  # one kv head per (head, column): 2 heads x 4 columns; absolute positions
    assert (cache["layers"], cache["kv_heads"], cache["head_dim"], cache["max_context"], cache["sliding"]) == \
           (2, 8, 8, 1024, False)
    task = raw["task"]  # per-step outputs for every new step; time is the graph's axis 2 (batch, columns, seq)
    assert (task["kind"], task["answer"], task["version"]) == ("sequence", "steps", 1)
    assert task["inputs"] == [{"name": "numeric_inputs", "time_axis": 2}, {"name": "categorical_inputs", "time_axis": 2}]
    assert task["outputs"] == [{"name": "numeric", "time_axis": 2}, {"name": "categorical", "time_axis": 2}]
    assert task["client"]["cache_heads"] == {"n_heads": 2, "n_columns": 4, "order": "kv head h * n_columns + c (head-major)"}
    rows = raw["parity"]
    assert rows and all(r["ok"] and r["max_abs_err"] <= 1e-4 for r in rows)
    for backend in ("onnxruntime", "torchscript"):
        assert len([r for r in rows if r["backend"] == backend and r["check"] == "forward"]) >= 2 * 6
        assert {r["output"] for r in rows if r["backend"] == backend and r["check"] == "stepwise"} >= {
            "numeric", "categorical", "present.1.value"}
    traced = {"batch": 3, "seq": 5, "past": 7}  # distinct_sizes avoiding the fixed dims 1, 3, 8, 13
    assert traced not in [r["sizes"] for r in rows]
    src = raw["source"]
    assert (src["kind"], src["target"], src["feature"], raw["exporter"]) == ("target", "hephaestus", "efficient",
                                                                             "legacy")
    assert src["attention"]["type"] == "local" and src["attention"]["classes"] == ["LocalAttention"]
    assert src["cache_check"]["max_abs_diff_vs_decoder"] <= 1e-5 and src["weights"].startswith("random (seed 0)")
    assert load_manifest(out).parity_ok and load_manifest(out).cache.sliding is False


def _users_decoder(repo: Path, seed: int, attention_type: str, kwargs: dict):
    """A TimeSeriesDecoder built by the user, with a config of their own (column and token names)."""
    models = import_from(repo, "hephaestus.timeseries_models.models")
    cfg = heph.HephaestusExportConfig.from_options(
        {"numeric_columns": ["temp", "load"], "categorical_columns": ["state", "mode"],
         "object_tokens": ["on", "off", "idle"]}, "efficient", with_checkpoint=False)
    g = torch.Generator().manual_seed(seed)
    reservoir = torch.randint(1, 30, (len(cfg.tokens), 8), generator=g)
    config = heph.time_series_config(models.TimeSeriesConfig, cfg, reservoir, 30)
    torch.manual_seed(seed)
    model = models.TimeSeriesDecoder(config, 8, 2, n_layers=3, attention_type=attention_type,
                                     attention_kwargs=kwargs)
    with torch.no_grad():  # trained-looking batch-norm statistics
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.3)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    return model.eval(), cfg


def test_checkpoint_export_decodes_step_by_step_as_the_users_model(repos, tmp_path, capsys, monkeypatch):
    import onnxruntime as ort

    kwargs = {"chunk_size": 4, "overlap": 2, "decay": "powerlaw", "alpha": 0.3}
    model, cfg = _users_decoder(repos.patched, 3, "chunked", kwargs)
    path = tmp_path / "tabular.ckpt"
    torch.save({f"model.{k}": v for k, v in model.state_dict().items()}, path)  # a TabularDecoder's state dict
    run = {"numeric_columns": cfg.numeric_columns, "categorical_columns": cfg.categorical_columns,
           "object_tokens": cfg.object_tokens, "d_model": 8, "n_heads": 2, "n_layers": 3,
           "attention_type": "chunked", "attention_kwargs": kwargs}
    out = tmp_path / "heph"
    rc, _, err = _run(["--target", repos.patched, "--feature", "chunked", "--out", out, "--checkpoint", path,
                       "--config", json.dumps(run)], capsys)
    # the efficient clone enables chunked: its feature name is accepted for the same files
    assert rc == 0, err
    m = load_manifest(out)
    assert m.source["weights"] == "checkpoint" and m.source["config"]["numeric_columns"] == ["temp", "load"]
    session = ort.InferenceSession(str(m.graph_file("model")), providers=["CPUExecutionProvider"])
    ts = torch.jit.load(str(m.graph_file("model", "torchscript")))
    g = torch.Generator().manual_seed(9)
    total = 19
    numeric = torch.randn(3, 2, total, generator=g)
    numeric[1, 0, 6] = float("nan")  # a missing value: 0, as TimeSeriesDecoder does
    ids = torch.tensor([cfg.tokens.index(t) for t in cfg.object_tokens], dtype=torch.float32)
    categorical = ids[torch.randint(0, 3, (3, 2, total), generator=g)]
    with torch.no_grad():
        want = model(numeric, categorical)  # the user's model, one forward over all 19 steps
    past = {n: np.zeros(m.cache.shape(3, 0), np.float32) for n in m.cache.past_names()}
    got_ort, got_ts, start = [], [], 0
    ts_past = [torch.from_numpy(v) for v in past.values()]
    for n in (4, 1, 1, 5, 1, 1, 6):
        step = {"numeric_inputs": numeric[:, :, start:start + n].numpy(),
                "categorical_inputs": categorical[:, :, start:start + n].numpy()}
        outs = session.run(None, dict(step, **past))
        got_ort.append(outs[:2])
        past = {p: outs[2 + i] for i, p in enumerate(m.cache.past_names())}  # present -> past, in order
        with torch.no_grad():
            t_outs = ts(*[torch.from_numpy(v) for v in step.values()], *ts_past)
        got_ts.append(t_outs[:2])
        ts_past = list(t_outs[2:])
        start += n
    assert start == total and past["past_key_values.0.key"].shape == m.cache.shape(3, total)
    for got in (got_ort, got_ts):
        numeric_out = np.concatenate([np.asarray(o[0]) for o in got], axis=2)
        categorical_out = np.concatenate([np.asarray(o[1]) for o in got], axis=2)
        assert np.abs(numeric_out - want.numeric.numpy()).max() <= 1e-4
        assert np.abs(categorical_out - want.categorical.numpy()).max() <= 1e-4

    # a stream of row 0 (no missing value) in chunks of 1, 3, 1, 7, ... through the runtime and the HTTP app
    from starlette.testclient import TestClient

    from runtime_exports import http_stream_in_chunks, stream_in_chunks
    from tsattn.runtime import load
    from tsattn.runtime.server import create_app

    runtime = load(out, device="cpu")
    assert runtime.manifest.task.kind == "sequence"
    row = {"numeric_inputs": numeric[0].numpy(), "categorical_inputs": categorical[0].numpy()}
    whole = runtime.predict({k: v[None] for k, v in row.items()})
    streamed = stream_in_chunks(runtime, row)
    with TestClient(create_app(runtime)) as client:
        over_http = http_stream_in_chunks(client, runtime.manifest, row)
    from tsattn.runtime import limits

    asked = []
    monkeypatch.setattr(limits, "chunk_length", lambda rows, n, *a, **k: asked.append(n) or 4)  # calls of 4 steps
    one_append = runtime.append(runtime.open_stream(), row)  # 19 steps cut along the time axis (axis 2 here)
    assert asked == [total]
    for got in (streamed, over_http, {k: v[0] for k, v in whole.items()}, one_append):
        assert np.abs(got["numeric"] - want.numeric[0].numpy()).max() <= 1e-4
        assert np.abs(got["categorical"] - want.categorical[0].numpy()).max() <= 1e-4
    runtime.shutdown()


@pytest.mark.parametrize("attention_type", list(TYPES))
def test_every_type_decodes_with_the_cache_exactly(repos, attention_type):
    """Eager: the adapted decoder step by step (a prefill, single steps, chunks) equals one forward over every
    position, outputs and final caches; and its first call equals the untouched decoder."""
    exportable = heph.build_hephaestus_export(
        repos.patched, "efficient", {"attention_type": attention_type, "attention_kwargs": TYPES[attention_type]},
        None, 0)
    spec = exportable.spec
    assert exportable.source["cache_check"]["max_abs_diff_vs_decoder"] <= 1e-5
    eager = eager_runner(exportable.module)
    rows = _stepwise(spec, eager, eager, "eager")
    assert rows and all(r["ok"] and r["max_abs_err"] <= 1e-5 for r in rows), rows


def test_a_cache_that_forgets_positions_fails_parity(repos, tmp_path, capsys, monkeypatch):
    """The stepwise check can fail: positions that restart at 0 after the cache (a wrong offset) exit 3."""
    monkeypatch.setattr(heph._ShiftedPositions, "forward", lambda self, x: self.positions(x))
    out = tmp_path / "heph"
    rc, _, err = _run(["--target", repos.patched, "--feature", "efficient", "--out", out, "--format", "onnx"],
                      capsys)
    assert rc == 3 and "stepwise" in err and "parity failed" in err
    assert not out.exists()


def test_refusals_exit_2_naming_the_cause(repos, tmp_path, capsys):
    out = tmp_path / "o"
    rc, _, err = _run(["--target", repos.base, "--feature", "efficient", "--out", out], capsys)
    assert rc == 2 and "is not patched with efficient" in err and "efficient_attention.py" in err
    rc, _, err = _run(["--target", repos.patched, "--feature", "efficient", "--out", out, "--exporter", "dynamo"],
                      capsys)
    assert rc == 2 and "cannot be exported with the dynamo exporter" in err and "use --exporter legacy" in err
    rc, _, err = _run(["--target", repos.patched, "--feature", "efficient", "--out", out,
                       "--set", 'attention_kwargs={"causal": false}'], capsys)
    assert rc == 2 and "needs causal attention" in err
    rc, _, err = _run(["--target", repos.sparse, "--feature", "sparse", "--out", out,
                       "--set", "attention_type=local"], capsys)
    assert rc == 2 and "attention_type 'local' is not enabled" in err and "['standard', 'sparse']" in err
    rc, _, err = _run(["--target", repos.patched, "--feature", "efficient", "--out", out,
                       "--set", 'attention_kwargs={"window_size": 4}'], capsys)
    assert rc == 2 and "building TimeSeriesDecoder" in err and "efficient_attention.py:" in err and "window_size" in err
    ckpt = tmp_path / "c.pt"
    torch.save({"time_series_transformer.x": torch.zeros(1)}, ckpt)
    rc, _, err = _run(["--target", repos.patched, "--feature", "efficient", "--out", out, "--checkpoint", ckpt,
                       "--set", "d_model=8"], capsys)
    assert rc == 2 and "Hephaestus checkpoints hold no config" in err and "numeric_columns" in err
    assert not out.exists()


@pytest.mark.parametrize("argv,match", [
    (["--set", "colour=red"], "unknown Hephaestus export option(s) ['colour']"),
    (["--set", "d_model=10", "--set", "n_heads=4"], "d_model (10) must be a multiple of n_heads (4)"),
    (["--set", "numeric_columns=0"], "numeric_columns must be >= 1"),
    (["--set", 'numeric_columns=["a", "a"]'], "a count or a list of distinct names"),
    (["--set", "object_tokens=0"], "categorical columns need at least one token"),
    (["--max-context", "64"], "unknown Hephaestus export option(s) ['max_context']"),
])
def test_bad_options_exit_2_naming_them(repos, tmp_path, capsys, argv, match):
    rc, _, err = _run(["--target", repos.patched, "--feature", "efficient", "--out", tmp_path / "o", *argv], capsys)
    assert rc == 2 and match in err


def test_numeric_only_config_and_a_per_type_clone(repos, tmp_path, capsys):
    out = tmp_path / "heph"
    rc, stdout, err = _run(["--target", repos.sparse, "--feature", "sparse", "--out", out, "--format", "onnx",
                            "--set", "categorical_columns=0", "--set", 'attention_kwargs={"stride": 2, '
                            '"local_window": 2}', "--json"], capsys)
    assert rc == 0, err
    raw = json.loads(stdout)
    assert [t["name"] for t in raw["graphs"]["model"]["inputs"]][:1] == ["numeric_inputs"]
    assert "categorical_inputs" not in [t["name"] for t in raw["graphs"]["model"]["inputs"]]
    assert raw["cache"]["kv_heads"] == 2 * 3 and raw["source"]["attention"]["type"] == "sparse"
    assert all(r["ok"] for r in raw["parity"])


def test_cache_spec_sliding_round_trips_and_old_manifests_slide():
    spec = CacheSpec(layers=2, kv_heads=6, head_dim=4, max_context=16, sliding=False)
    assert CacheSpec.from_dict(spec.to_dict()) == spec
    assert spec.fits(10, 6) and not spec.fits(10, 7)
    old = spec.to_dict()
    del old["sliding"]
    assert CacheSpec.from_dict(old).sliding is True and CacheSpec.from_dict(old).fits(10**6, 1)
    with pytest.raises(ManifestError, match="needs max_context"):
        CacheSpec(layers=1, kv_heads=1, head_dim=1, max_context=None, sliding=False)
    with pytest.raises(ManifestError, match="sliding must be true or false"):
        CacheSpec.from_dict(dict(spec.to_dict(), sliding="no"))
