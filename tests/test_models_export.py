"""Seed 002's models through torch.jit.trace and ONNX (legacy exporter) with ONNX Runtime parity at new shapes.

The graphs are tsattn.models.graphs' flat wrappers: full forwards, the autoregressive decode step and the
encoder-decoder's encoder + decode step, with the cache tensors named past_key_values.{i}.key/.value ->
present.{i}.key/.value and cross_key_values.{i}.key/.value. MoE on and off (capacity small enough to overflow).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tsattn.models import (
    AutoregressiveTransformerModel,
    DecodeStepGraph,
    DecoderStepGraph,
    EncoderDecoder,
    EncoderGraph,
    FFNConfig,
    ForwardGraph,
    TransformerModel,
)

E, H, LATENT = 16, 4, 24
MOE = dict(use_moe=True, num_experts=4, capacity=5, alpha=0.01, topk=2)  # overflows at the test shapes
# Capacity counts the tokens of one call, so a decode loop equals the full forward only without overflow.
MOE_ROOMY = dict(MOE, capacity=1000)


def _ffn(moe):
    if not moe:
        return None
    return FFNConfig(E, LATENT, **(moe if isinstance(moe, dict) else MOE))


def _regression(moe, attention_type="gqa"):
    torch.manual_seed(0)
    return TransformerModel(input_dim=3, embed_dim=E, ffn_latent_dim=LATENT, num_layers=2, num_heads=H, output_dim=2,
                            max_seq_len=32, attention_type=attention_type, ffn_config=_ffn(moe)).eval()


def _ar(moe, attention_type="gqa", **kw):
    torch.manual_seed(1)
    return AutoregressiveTransformerModel(input_dim=3, embed_dim=E, ffn_latent_dim=LATENT, num_layers=2, num_heads=H,
                                          output_dim=2, max_seq_len=8, attention_type=attention_type,
                                          ffn_config=_ffn(moe), **kw).eval()


def _encdec(moe, attention_type="mqa"):
    torch.manual_seed(2)
    return EncoderDecoder(input_dim=2, embed_dim=E, ffn_latent_dim=LATENT, num_encoder_layers=2, num_decoder_layers=2,
                          num_heads=H, output_dim=2, max_seq_len=32, attention_type=attention_type,
                          ffn_config=_ffn(moe)).eval()


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _kv_shape(model, batch, length):
    att = model.layers[0].attention if hasattr(model, "layers") else model.decoder_layers[0].self_attention
    return (batch, att.num_kv_heads, length, att.head_dim)


def _inputs(graph, batch, seq, past, src=6, seed=0):
    """Example inputs of a graph wrapper: batch, sequence length, past length (decode graphs), source length."""
    m = graph.model
    if isinstance(graph, ForwardGraph):
        if isinstance(m, EncoderDecoder):
            return (_randn(batch, src, 2, seed=seed), _randn(batch, seq, 2, seed=seed + 1))
        return (_randn(batch, seq, 3, seed=seed),)
    if isinstance(graph, EncoderGraph):
        return (_randn(batch, src, 2, seed=seed),)
    start = () if graph.expanding_context else (torch.tensor(past + 2, dtype=torch.int64),)
    if isinstance(graph, DecodeStepGraph):
        caches = [_randn(*_kv_shape(m, batch, past), seed=seed + i) for i in range(2 * len(m.layers))]
        return (_randn(batch, seq, 3, seed=seed + 99), *start, *caches)
    n = len(m.decoder_layers)
    kv = _kv_shape(m, batch, src)
    cross = [_randn(*kv, seed=seed + 50 + i) for i in range(2 * n)]
    caches = [_randn(*_kv_shape(m, batch, past), seed=seed + i) for i in range(2 * n)]
    return (_randn(batch, seq, 2, seed=seed + 99), *start, *cross, *caches)


TRACE_AT = (2, 5, 3)  # batch, seq, past
OTHER = [(3, 1, 0), (1, 7, 9), (2, 1, 6)]


def _graphs(kind, moe):
    if kind == "regression":
        return [ForwardGraph(_regression(moe))]
    if kind == "autoregressive":
        m = _ar(moe)
        return [ForwardGraph(m), DecodeStepGraph(m), DecodeStepGraph(m, expanding_context=False)]
    m = _encdec(moe)
    return [ForwardGraph(m), EncoderGraph(m), DecoderStepGraph(m), DecoderStepGraph(m, expanding_context=False)]


def _outputs(graph, args):
    with torch.no_grad():
        out = graph(*args)
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
@pytest.mark.parametrize("kind", ["regression", "autoregressive", "encoder_decoder"])
def test_jit_trace_generalises_to_other_shapes(kind, moe):
    for graph in _graphs(kind, moe):
        with torch.no_grad():
            traced = torch.jit.trace(graph, _inputs(graph, *TRACE_AT), check_trace=False)
        for i, shape in enumerate(OTHER):
            args = _inputs(graph, *shape, seed=10 * i + 1)
            got, want = traced(*args), _outputs(graph, args)
            got = got if isinstance(got, tuple) else (got,)
            for g, w in zip(got, want):
                assert g.shape == w.shape and (g - w).abs().max() <= 1e-5, (type(graph).__name__, shape)


def _export(graph, path):
    import onnx

    spec = graph.spec
    with torch.no_grad():
        torch.onnx.export(graph, _inputs(graph, *TRACE_AT), str(path), dynamo=False, opset_version=17,
                          input_names=list(spec.input_names), output_names=list(spec.output_names),
                          dynamic_axes=spec.dynamic_axes)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == list(spec.input_names)
    assert [o.name for o in model.graph.output] == list(spec.output_names)
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
@pytest.mark.parametrize("kind", ["regression", "autoregressive", "encoder_decoder"])
def test_onnx_export_runs_in_onnxruntime_at_other_shapes(tmp_path, kind, moe):
    for n, graph in enumerate(_graphs(kind, moe)):
        sess = _export(graph, tmp_path / f"{kind}{n}.onnx")
        for i, shape in enumerate(OTHER):
            args = _inputs(graph, *shape, seed=10 * i + 3)
            got = sess.run(None, {name: a.numpy() for name, a in zip(graph.spec.input_names, args)})
            for g, w in zip(got, _outputs(graph, args)):
                assert g.shape == tuple(w.shape), (type(graph).__name__, shape)
                assert np.abs(g - w.numpy()).max() <= 1e-4, (type(graph).__name__, shape)


def test_decode_step_graph_names_follow_the_cache_convention():
    m = _ar(False)
    spec = DecodeStepGraph(m).spec
    assert spec.input_names == ("x", "past_key_values.0.key", "past_key_values.0.value",
                                "past_key_values.1.key", "past_key_values.1.value")
    assert spec.output_names == ("y", "present.0.key", "present.0.value", "present.1.key", "present.1.value")
    assert spec.dynamic_axes["past_key_values.1.value"] == {0: "batch", 2: "past"}
    assert spec.dynamic_axes["present.0.key"] == {0: "batch", 2: "present"}
    assert DecodeStepGraph(m, expanding_context=False).spec.input_names[:2] == ("x", "start_pos")
    spec = DecoderStepGraph(_encdec(False)).spec
    assert spec.input_names[1:5] == ("cross_key_values.0.key", "cross_key_values.0.value",
                                     "cross_key_values.1.key", "cross_key_values.1.value")
    assert EncoderGraph(_encdec(False)).spec.output_names[1] == "cross_key_values.0.key"


def _feed(spec, values):
    return {name: v.numpy() if isinstance(v, torch.Tensor) else v for name, v in zip(spec.input_names, values)}


@pytest.mark.parametrize("expanding", [True, False], ids=["expanding", "sliding"])
def test_onnx_decode_loop_equals_eager_full_forward(tmp_path, expanding):
    """Prefill with an empty past, then one step at a time, presents fed back: ORT == eager full forward."""
    m = _ar(MOE_ROOMY, "mqa")
    graph = DecodeStepGraph(m, expanding_context=expanding)
    sess = _export(graph, tmp_path / "step.onnx")
    x = _randn(2, 20, 3, seed=7)
    with torch.no_grad():
        full = m(x, expanding_context=expanding)
    caches = [np.zeros(_kv_shape(m, 2, 0), dtype=np.float32)] * (2 * len(m.layers))
    outs, t = [], 0
    for size in (4, 1, 1, 3) + (1,) * 11:
        start = () if expanding else (torch.tensor(t),)
        res = sess.run(None, _feed(graph.spec, (x[:, t:t + size], *start, *caches)))
        outs.append(res[0])
        caches = res[1:]
        t += size
    assert t == 20
    assert np.abs(np.concatenate(outs, 1) - full.numpy()).max() <= 1e-4
    assert caches[0].shape[2] == (20 if expanding else 7)


def test_onnx_encoder_then_decode_loop_equals_eager_forward(tmp_path):
    m = _encdec(MOE_ROOMY, "gqa")
    enc, dec = EncoderGraph(m), DecoderStepGraph(m)
    enc_sess, dec_sess = _export(enc, tmp_path / "enc.onnx"), _export(dec, tmp_path / "dec.onnx")
    s, t = _randn(3, 9, 2, seed=8), _randn(3, 12, 2, seed=9)
    with torch.no_grad():
        full = m(s, t)
    memory, *cross = enc_sess.run(None, {"source": s.numpy()})
    caches = [np.zeros(_kv_shape(m, 3, 0), dtype=np.float32)] * (2 * len(m.decoder_layers))
    outs = []
    for i in range(12):
        res = dec_sess.run(None, _feed(dec.spec, (t[:, i:i + 1], *cross, *caches)))
        outs.append(res[0])
        caches = res[1:]
    assert np.abs(np.concatenate(outs, 1) - full.numpy()).max() <= 1e-4


def test_decode_step_traced_with_an_empty_past_generalises():
    """Exporter trap: with an example past of length 0, Lq == Lk at trace time; the graph must not keep a
    shortcut (SDPA's is_causal) that is only right without a past."""
    m = _ar(False, "mha")  # no decay: the attention bias is the plain causal mask
    graph = DecodeStepGraph(m)
    with torch.no_grad():
        traced = torch.jit.trace(graph, _inputs(graph, 2, 3, 0), check_trace=False)
    for shape in ((2, 3, 4), (1, 1, 5)):
        args = _inputs(graph, *shape, seed=5)
        for g, w in zip(traced(*args), _outputs(graph, args)):
            assert (g - w).abs().max() <= 1e-5, shape
