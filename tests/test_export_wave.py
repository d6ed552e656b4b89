"""tsattn-export --target Wave-Transformer --feature F: the patched look-alike's WaveTransformer (token encoder and
decoder) as one decode-step graph with a cache of differently shaped tensors.

The references are the test's own: a WaveTransformer built and saved here (the user's checkpoint path), run in
eager over the whole sequence, against the exported ONNX graph driven step by step with plain onnxruntime (the
presents fed back as pasts) and the TorchScript module; the runtime's stateless predict serves the same graph.
"""

from __future__ import annotations

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


def test_runtime_predicts_with_an_empty_or_given_cache_and_refuses_streams(exported):
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
    with pytest.raises(rt.NotSupported, match="causal_lm"):
        runtime.open_stream()
