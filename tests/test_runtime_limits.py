"""tsattn.runtime under hostile input: long inputs in chunks (same results, bounded calls), idempotent appends
(offset), non-finite outputs refused before a cache changes, eviction of streams that hold cache, stream info."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from runtime_exports import reference_export
from tsattn.runtime import InputError, StreamEvicted, TooManyValues, limits, load
from tsattn.runtime.errors import NonFiniteOutput, OffsetMismatch

TOL = 1e-4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    # scale 0.01: a value of 1e37 overflows float32 inside the graph ((x - loc) / scale), as a value near float32's
    # maximum does in the default-sized model
    return reference_export(tmp_path_factory.mktemp("lim") / "ref", scale=0.01)


@pytest.fixture
def rt(ref):
    runtime = load(ref[0], device="cpu")
    yield runtime
    runtime.shutdown()


def _eager(model, series) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(series, np.float32)))[0].numpy()


def _count_calls(rt, monkeypatch):
    session = rt.sessions["model"]
    calls = []

    class Counted:
        def __getattr__(self, name):
            return getattr(session, name)

        def run_with_iobinding(self, io, *a, **k):
            calls.append(1)
            return session.run_with_iobinding(io, *a, **k)

    monkeypatch.setitem(rt.sessions, "model", Counted())
    return calls


def test_a_long_predict_runs_in_chunks_and_equals_the_eager_forward(ref, rt, monkeypatch):
    _, model = ref
    x = np.random.default_rng(0).normal(size=(2, 3 * limits.PREFILL_CHUNK + 17)).astype(np.float32)
    calls = _count_calls(rt, monkeypatch)
    got = rt.predict({"values": x})["forecast"]
    assert len(calls) == 4  # ceil(785 / 256) chunks, both rows in each call
    assert got.shape == (2, x.shape[1], 5) and np.abs(got - _eager(model, x)).max() <= TOL
    calls.clear()
    many = np.random.default_rng(1).normal(size=(limits.CALL_POSITIONS // 2 + 5, 2)).astype(np.float32)
    got = rt.predict({"values": many})["forecast"]  # more rows than one call holds: row groups
    assert len(calls) == 2 and np.abs(got - _eager(model, many)).max() <= TOL


def test_a_long_append_is_stepped_in_chunks_and_equals_the_eager_forward(ref, rt, monkeypatch):
    _, model = ref
    x = np.random.default_rng(2).normal(size=600).astype(np.float32)
    s = rt.open_stream()
    calls = _count_calls(rt, monkeypatch)
    got = rt.append(s, x)
    assert len(calls) == 3 and s.observed == 600 and s.length == 16
    assert np.abs(got - _eager(model, x[None])[0, -1]).max() <= TOL
    assert rt.stats()["model_calls"] == 1  # one append, one step, in three session calls


def test_chunk_sizes_bound_rows_times_positions():
    assert limits.chunk_length(1, 10_000) == limits.PREFILL_CHUNK
    assert limits.chunk_length(64, 1) == 1
    assert limits.chunk_length(limits.CALL_POSITIONS, 50) == 1
    assert limits.chunk_length(100, 10_000) * 100 <= limits.CALL_POSITIONS
    groups = limits.row_groups(10_000, 3)
    assert groups[0] == (0, limits.CALL_POSITIONS // 3) and groups[-1][1] == 10_000


def test_an_append_with_the_expected_offset_is_applied_once(ref, rt):
    _, model = ref
    s = rt.open_stream()
    rt.append(s, [1.0, 2.0], offset=0)
    with pytest.raises(OffsetMismatch) as info:  # the retry of an append that was applied
        rt.append(s, [1.0, 2.0], offset=0)
    assert info.value.status == 409 and info.value.observed == 2 and info.value.length == 2
    assert "observed 2" in str(info.value) and rt.get_stream(s).observed == 2
    got = rt.append(s, [3.0], offset=2)
    assert np.abs(got - _eager(model, [[1.0, 2.0, 3.0]])[0, -1]).max() <= TOL
    with pytest.raises(InputError, match="offset must be an integer >= 0"):
        rt.append(s, [1.0], offset=-1)
    assert rt.stats()["rejected_offset"] == 1


def test_an_offset_is_checked_after_the_appends_queued_before_it(ref, rt):
    s = rt.open_stream()
    gate, started = threading.Event(), threading.Event()
    step = rt._step

    def held(group):
        started.set()
        gate.wait(10)
        step(group)

    rt._step = held
    first = rt.submit(s, [1.0, 2.0], offset=0)  # the worker holds it
    assert started.wait(10)
    retry = rt.submit(s, [1.0, 2.0], offset=0)  # a retry while the first is still running: queued
    following = rt.submit(s, [3.0], offset=2)
    gate.set()
    assert first.result(10).observed == 2
    with pytest.raises(OffsetMismatch, match="offset 0 does not match .* observed 2"):
        retry.result(10)
    assert following.result(10).observed == 3 and rt.get_stream(s).observed == 3


def test_non_finite_outputs_are_refused_and_the_stream_is_left_as_it_was(ref, rt):
    _, model = ref
    s = rt.open_stream()
    rt.append(s, [1.0, 2.0])
    with pytest.raises(NonFiniteOutput, match="not finite .* left as it was") as info:
        rt.append(s, [3.0, 1e37])  # finite in float32, overflows inside the graph
    assert info.value.status == 422
    assert (s.observed, s.length) == (2, 2)
    got = rt.append(s, [3.0])
    assert np.isfinite(got).all() and np.abs(got - _eager(model, [[1.0, 2.0, 3.0]])[0, -1]).max() <= TOL
    with pytest.raises(NonFiniteOutput, match="output 'forecast'"):
        rt.predict({"values": [[1.0, 1e37]]})
    assert rt.stats()["rejected_nonfinite"] == 1


def test_a_non_finite_stream_in_a_batch_fails_alone(ref):
    _, model = ref
    with load(ref[0], device="cpu", batch_window_ms=300, max_batch=8) as rt:
        good, bad = rt.open_stream(), rt.open_stream()
        for s in (good, bad):
            rt.append(s, [1.0, 2.0])
        futures = [rt.submit(good, [5.0]), rt.submit(bad, [1e37])]
        assert np.isfinite(futures[0].result(10).forecast).all()
        with pytest.raises(NonFiniteOutput):
            futures[1].result(10)
        assert rt.stats()["batched_calls"] >= 1
        for s, series in ((good, [1.0, 2.0, 5.0, 4.0]), (bad, [1.0, 2.0, 4.0])):
            got = rt.append(s, [4.0])
            assert np.abs(got - _eager(model, [series])[0, -1]).max() <= TOL


def test_cache_pressure_evicts_the_least_recently_used_stream_that_holds_cache(ref):
    from tsattn.export.manifest import load_manifest

    per_position = load_manifest(ref[0]).cache.bytes_per_position(4)
    with load(ref[0], device="cpu", max_cache_bytes=per_position * 20) as rt:
        empty = rt.open_stream()  # least recently used, but holds no cache
        a, b = rt.open_stream(), rt.open_stream()
        rt.append(a, np.ones(12))
        rt.append(b, np.ones(12))  # over the budget: a goes, not the empty stream
        with pytest.raises(StreamEvicted, match="max_cache_bytes"):
            rt.append(a, 1.0)
        assert rt.append(empty, 1.0).shape == (5,)
        assert rt.stats()["evictions"] == {"max_cache_bytes": 1}


def test_stream_info_and_channel_limit(rt):
    s = rt.open_stream(channels=2)
    rt.append(s, [[1.0, 2.0], [3.0, 4.0]])
    info = rt.stream_info(s.id)
    assert {k: info[k] for k in ("id", "model", "channels", "length", "observed", "pending")} == {
        "id": s.id, "model": "reference", "channels": 2, "length": 2, "observed": 2, "pending": 0}
    assert info["created"].endswith("Z") and info["created"] <= info["last_used"] and info["idle_s"] >= 0
    with pytest.raises(TooManyValues, match="max_channels"):
        rt.open_stream(channels=limits.MAX_CHANNELS + 1)


def test_json_guard_refuses_deep_nesting_and_long_numbers_before_parsing():
    limits.check_json(b'{"values": [[1, 2], [3, 4]], "s": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}')
    with pytest.raises(limits.JsonRefused, match="nests 33 levels deep; the limit is 32") as info:
        limits.check_json(b"[" * 33 + b"]" * 33)
    assert info.value.kind == "json_too_deep"
    with pytest.raises(limits.JsonRefused, match="nests 100001 levels"):
        limits.loads(b'{"values": ' + b"[" * 100_000)
    with pytest.raises(limits.JsonRefused, match="number of 5000 characters; the limit is 64"):
        limits.loads(b'{"values": [' + b"9" * 5000 + b"]}")
    assert limits.loads(b'{"v": [' + b"9" * 30 + b"]}")["v"][0] == float("9" * 30)  # beyond int64: a float
    assert limits.loads(b'{"v": ["' + b"\\\"" * 1000 + b'"]}')["v"][0] == '"' * 1000
    with pytest.raises(ValueError):
        limits.dumps({"x": float("nan")})


def test_a_chunked_predict_with_a_given_past_and_present_outputs_equals_one_call(ref, rt):
    cache = rt.manifest.cache
    x = np.random.default_rng(3).normal(size=(3, 2 * limits.PREFILL_CHUNK + 40)).astype(np.float32)
    wanted = ["forecast", *cache.present_names()]
    first = rt.predict({"values": x[:, :30]}, outputs=wanted)
    past = dict(zip(cache.past_names(), (first[n] for n in cache.present_names())))
    chunked = rt.predict({"values": x[:, 30:], **past}, outputs=wanted)
    rt._predict_chunked = lambda arrays, outputs: None  # the same predict as one session call
    one = rt.predict({"values": x[:, 30:], **past}, outputs=wanted)
    for name in wanted:
        assert chunked[name].shape == one[name].shape, name
        assert np.abs(chunked[name] - one[name]).max() <= 1e-5, name
    assert chunked[cache.present_names()[0]].shape[2] == 16  # the window slid: max_context positions
