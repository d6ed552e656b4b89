"""tsattn-export --target Wave-Transformer --feature F: the patched look-alike's WaveTransformer (token encoder and
decoder) as one decode-step graph with a cache of differently shaped tensors.

The references are the test's own: a WaveTransformer built and saved here (the user's checkpoint path), run in
eager over the whole sequence, against the exported ONNX graph driven step by step with plain onnxruntime (the
presents fed back as pasts) and the TorchScript module; the runtime's stateless predict serves the same graph.
"""

from __future__ import annotations

import re
import types

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tsattn.examples import imports_from, lookalike_repo
from tsattn.export import cli
from tsattn.export.manifest import load_manifest
from tsattn.injector import engine

from repo_checks import checked_manifest

VOCAB = 40
MODEL = {"num_harmonics": 8, "transformer_num_layers": 3, "transformer_num_heads": 4, "transformer_heads_kv": 2,
         "transformer_d_ff_multi": 2, "max_seq_len": 64, "dropout": 0.0, "use_flash": False}
FEATURES = {  # the patched WaveTransformer's flags per feature, as the user trained it
    "enhancements": {"use_ahs": True, "use_fcl": True, "use_pcca": True, "use_mrwp": True, "pyramid_interval": 2,
                     "mrwp_band_num_layers": [1, 1, 1]},
    "wcmha": {"use_wcmha": True},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=sorted(FEATURES))
def exported(request, tmp_path_factory):
    """(feature, the test's own eager model, export dir): a model saved with WaveTransformer.save() and exported
    from that checkpoint with the legacy exporter."""
    feature = request.param
    root = tmp_path_factory.mktemp(f"wave-{feature}")
    repo = lookalike_repo("wave_transformer_lookalike", root / "Wave-Transformer")
    engine.inject(repo, feature, patch_out=root / "p.patch")
    torch.manual_seed(3)
    with imports_from(repo / "src", repo) as load:
        core = load("wave_transformer.core.wave_transformer")
        encoder = load("wave_transformer.language_modelling.token_encoder").TokenToWaveEncoder(VOCAB, num_harmonics=8)
        decoder = load("wave_transformer.language_modelling.token_decoder").WaveToTokenDecoder(
            VOCAB, num_harmonics=8, d_model=16, num_heads=4, num_heads_kv=2, max_seq_len=64)
        model = core.WaveTransformer(encoder, decoder, **MODEL, **FEATURES[feature]).eval()
        alphas = [t for name, t in model.state_dict().items() if name.endswith("decay_bias.alpha")]
        assert bool(alphas) == (feature == "wcmha")
        for t in alphas:  # the decay's alpha away from its default (a buffer: state_dict shares its storage)
            t.fill_(0.7)
        model.save(root / "ckpt")
    out = root / "export"
    rc = cli.main(["--target", str(repo), "--feature", feature, "--checkpoint", str(root / "ckpt"),
                   "--set", f"vocab_size={VOCAB}", "--exporter", "legacy", "--out", str(out)])
    assert rc == 0
    return types.SimpleNamespace(feature=feature, model=model, out=out)


def _eager_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model({"token_ids": torch.from_numpy(ids)}).numpy()


def test_manifest_lists_every_cache_tensor_and_parity_holds(exported):
    raw = checked_manifest(exported.out)  # sha256 and sizes recomputed here
    cache = raw["cache"]
    assert cache["sliding"] is False and cache["max_context"] == 64 and cache["tensors"]
    parts = {t["part"] for t in cache["tensors"]}
    assert {"key", "value"} <= parts
    if exported.feature == "enhancements":  # AHS context and PCCA's wave state besides keys and values
        assert {"context", "wave"} <= parts and len({(t["heads"], t["dim"]) for t in cache["tensors"]}) > 1
    graph = raw["graphs"]["model"]
    assert [t["name"] for t in graph["inputs"]] == ["token_ids"] + [t["past"] for t in cache["tensors"]]
    assert [t["name"] for t in graph["outputs"]] == ["logits"] + [t["present"] for t in cache["tensors"]]
    rows = raw["parity"]
    assert rows and all(r["ok"] and r["max_abs_err"] <= 1e-4 for r in rows)
    assert {(r["backend"], r["check"]) for r in rows} == {(b, c) for b in ("onnxruntime", "torchscript")
                                                          for c in ("forward", "stepwise")}
    assert raw["source"]["weights"].startswith("checkpoint") and raw["source"]["checkpoint"]["path"].endswith("ckpt")
    assert load_manifest(exported.out).parity_ok


def test_onnx_decodes_step_by_step_as_the_users_model_in_one_forward(exported):
    manifest = load_manifest(exported.out)
    cache = manifest.cache
    ids = np.random.default_rng(0).integers(0, VOCAB, size=(2, 13), dtype=np.int64)
    want = _eager_logits(exported.model, ids)
    session = ort.InferenceSession(str(exported.out / "model.onnx"), providers=["CPUExecutionProvider"])
    past = {name: np.zeros(shape, np.float32) for name, shape in zip(cache.past_names(), cache.shapes(2, 0))}
    got, t = [], 0
    for n in (4, 1, 3, 1, 1, 2, 1):
        outs = session.run(None, {"token_ids": ids[:, t:t + n], **past})
        got.append(outs[0])
        past = dict(zip(cache.past_names(), outs[1:]))
        t += n
    assert t == ids.shape[1]
    assert [p.shape[2] for p in past.values()] == [t] * len(past)
    np.testing.assert_allclose(np.concatenate(got, axis=1), want, atol=1e-4, rtol=0)

    scripted = torch.jit.load(str(exported.out / "model.pt"))
    empty = [torch.zeros(s) for s in cache.shapes(2, 0)]
    with torch.no_grad():
        logits = scripted(torch.from_numpy(ids), *empty)[0].numpy()
    np.testing.assert_allclose(logits, want, atol=1e-4, rtol=0)


def test_runtime_predicts_with_an_empty_or_given_cache(exported):
    import tsattn.runtime as rt

    runtime = rt.load(exported.out)
    ids = np.random.default_rng(1).integers(0, VOCAB, size=(1, 9), dtype=np.int64)
    want = _eager_logits(exported.model, ids)
    cache = runtime.manifest.cache
    first = runtime.predict({"token_ids": ids[:, :6]}, outputs=["logits", *cache.present_names()])
    np.testing.assert_allclose(first["logits"], want[:, :6], atol=1e-4, rtol=0)
    past = dict(zip(cache.past_names(), (first[n] for n in cache.present_names())))
    rest = runtime.predict({"token_ids": ids[:, 6:], **past})
    np.testing.assert_allclose(rest["logits"], want[:, 6:], atol=1e-4, rtol=0)
    runtime.shutdown()


def test_a_stream_fed_in_uneven_chunks_equals_predict_and_the_users_model(exported):
    """Token ids in chunks of 1, 3, 1, 7, ... through the runtime and through the HTTP app: the logits of every
    new token equal one stateless predict over the whole sequence and the user's eager model (<= 1e-4)."""
    import tsattn.runtime as rt
    from starlette.testclient import TestClient

    from runtime_exports import http_stream_in_chunks, stream_in_chunks
    from tsattn.runtime.server import create_app

    runtime = rt.load(exported.out, device="cpu")
    assert runtime.manifest.task.kind == "causal_lm"
    ids = np.random.default_rng(4).integers(0, VOCAB, size=21, dtype=np.int64)
    want = _eager_logits(exported.model, ids[None])[0]
    whole = runtime.predict({"token_ids": ids[None]})["logits"][0]
    got = stream_in_chunks(runtime, {"token_ids": ids})["logits"]
    np.testing.assert_allclose(whole, want, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    with TestClient(create_app(runtime)) as client:
        contract = client.get("/v1/models").json()["models"][0]["stream"]
        assert contract["inputs"] == [{"name": "token_ids", "dtype": "int64", "shape": ["seq"], "time_axis": 0}]
        assert contract["kind"] == "causal_lm" and contract["sliding"] is False
        over_http = http_stream_in_chunks(client, runtime.manifest, {"token_ids": ids})["logits"]
    np.testing.assert_allclose(over_http, want, atol=1e-4, rtol=0)
    runtime.shutdown()


def test_generate_feeds_its_samples_back_through_the_cache(exported):
    import tsattn.runtime as rt

    runtime = rt.load(exported.out, device="cpu")
    prompt = np.array([3, 1, 4], dtype=np.int64)
    s = runtime.open_stream()
    runtime.append(s, {"token_ids": prompt})
    greedy = runtime.generate(s, 5)
    assert greedy.shape == (5,) and runtime.get_stream(s).observed == 8
    seq = np.concatenate([prompt, greedy])
    logits = _eager_logits(exported.model, seq[None])[0]  # greedy: each sample is the argmax after its prefix
    assert list(greedy) == [int(np.argmax(logits[t])) for t in range(2, 7)]
    sampled = [runtime.generate(runtime_stream, 6, top_k=5, seed=11)
               for runtime_stream in (_prompted(runtime, prompt), _prompted(runtime, prompt))]
    assert list(sampled[0]) == list(sampled[1])  # one seed, one sequence
    seq = np.concatenate([prompt, sampled[0]])
    logits = _eager_logits(exported.model, seq[None])[0]
    for t, token in enumerate(sampled[0]):  # every sample is among the 5 most likely after its prefix
        assert token in np.argsort(logits[len(prompt) - 1 + t])[-5:]
    with pytest.raises(rt.InputError, match="no token yet"):
        runtime.generate(runtime.open_stream(), 1)
    from starlette.testclient import TestClient

    from tsattn.runtime.server import create_app

    with TestClient(create_app(runtime)) as client:  # POST /v1/streams/{id}/generate: the same tokens
        stream = client.post("/v1/streams").json()["id"]
        client.post(f"/v1/streams/{stream}/observations", json={"inputs": {"token_ids": prompt.tolist()}})
        r = client.post(f"/v1/streams/{stream}/generate", json={"n": 6, "top_k": 5, "seed": 11})
        assert r.status_code == 200 and r.json()["tokens"] == list(sampled[0]) and r.json()["observed"] == 9
        r = client.post(f"/v1/streams/{stream}/generate", json={"n": 0})
        assert r.status_code == 422 and "n: expected an integer from 1" in r.json()["error"]
        assert "/v1/streams/{stream_id}/generate" in client.get("/openapi.json").json()["paths"]
    runtime.shutdown()


def _prompted(runtime, prompt):
    s = runtime.open_stream()
    runtime.append(s, {"token_ids": prompt})
    return s


def test_an_append_past_the_capacity_is_refused_and_leaves_the_stream_as_it_was(exported):
    """Absolute positions (YaRN tables of 64): 60 tokens, then 5 more is 409 naming the capacity; the stream keeps
    its 60 and takes the 4 that fit, with the logits of one forward over all 64."""
    import tsattn.runtime as rt
    from starlette.testclient import TestClient

    from tsattn.runtime.server import create_app

    runtime = rt.load(exported.out, device="cpu")
    ids = np.random.default_rng(5).integers(0, VOCAB, size=64, dtype=np.int64)
    want = _eager_logits(exported.model, ids[None])[0]
    s = runtime.open_stream()
    runtime.append(s, {"token_ids": ids[:60]})
    with pytest.raises(rt.CacheFull, match=r"holds 60 of the cache's 64 positions.*at most 4 more.*close the stream"):
        runtime.append(s, {"token_ids": ids[:5]})
    assert (runtime.get_stream(s).observed, runtime.get_stream(s).length) == (60, 60)
    last = runtime.append(s, {"token_ids": ids[60:64]})["logits"]
    np.testing.assert_allclose(last, want[60:], atol=1e-4, rtol=0)
    with TestClient(create_app(runtime)) as client:
        stream = client.post("/v1/streams").json()["id"]
        url = f"/v1/streams/{stream}/observations"
        assert client.post(url, json={"inputs": {"token_ids": ids[:62].tolist()}}).status_code == 200
        r = client.post(url, json={"inputs": {"token_ids": ids[:3].tolist()}})
        assert r.status_code == 409 and r.json()["type"] == "cache_full" and "64 positions" in r.json()["error"]
        assert re.search(r"^tsattn_rejected_cache_full_total 2\.0$", client.get("/metrics").text, re.M)
        r = client.post(url, json={"inputs": {"token_ids": ids[62:].tolist()}})
        assert r.status_code == 200 and r.json()["observed"] == 64
        np.testing.assert_allclose(np.asarray(r.json()["outputs"]["logits"]), want[62:], atol=1e-4, rtol=0)
    runtime.shutdown()
