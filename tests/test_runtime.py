"""tsattn.runtime: verified loading, streams against the eager model, batched stepping, on-device caches,
eviction, predict, input checks, devices."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import onnxruntime as ort
import pytest
import torch

from runtime_exports import cacheless_export, copy_export, reference_export
from tsattn.export.manifest import ManifestError, load_manifest
from tsattn.runtime import (DeviceUnavailable, InputError, NotSupported, Overloaded, Runtime, StreamEvicted,
                            TooManyStreams, TooManyValues, UnknownStream, load)
from tsattn.runtime import device as device_mod
from tsattn.runtime.cacheops import concat_model, split_model

TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    return reference_export(tmp_path_factory.mktemp("rt") / "ref")


@pytest.fixture(scope="module")
def window(tmp_path_factory):
    return cacheless_export(tmp_path_factory.mktemp("rt") / "window")


@pytest.fixture
def rt(ref):
    runtime = load(ref[0], device="cpu")
    yield runtime
    runtime.shutdown()


def _eager(model, series: np.ndarray) -> np.ndarray:
    """The eager model's forecasts at every position of ``series`` (rows, L): (rows, L, horizon)."""
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(series, np.float32)))[0].numpy()


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# ---------------------------------------------------------------------------------------------------- streams


def test_stream_forecasts_equal_the_eager_full_context_forecast(ref, rt):
    _, model = ref
    rng = np.random.default_rng(0)
    series = rng.normal(size=40).astype(np.float32)
    want = _eager(model, series[None])[0]  # one full forward over everything, window of 16 included
    s = rt.open_stream()
    end, worst = 0, 0.0
    for n in (1, 4, 1, 1, 7, 1, 3, 12, 1, 9):  # single steps and chunks, well past max_context = 16
        got = rt.append(s, series[end : end + n] if n > 1 else float(series[end]))
        end += n
        assert got.shape == (5,)
        worst = max(worst, float(np.abs(got - want[end - 1]).max()))
    assert worst <= TOL
    assert s.length == 16 and s.observed == 40  # the cache slid: it keeps max_context positions


def test_multichannel_stream_is_channel_independent_rows(ref, rt):
    _, model = ref
    x = np.random.default_rng(1).normal(size=(21, 3)).astype(np.float32)  # (time, channels)
    want = _eager(model, x.T)  # (3, 21, horizon)
    s = rt.open_stream(channels=3)
    rt.append(s, x[:20])
    got = rt.append(s, x[20:])  # one (1, 3) observation
    assert got.shape == (5, 3)  # (horizon, channels)
    assert np.abs(got - want[:, -1].T).max() <= TOL


def test_predict_on_a_cached_graph_is_the_recompute_and_matches_the_stream(ref, rt):
    _, model = ref
    x = np.random.default_rng(2).normal(size=(2, 11)).astype(np.float32)
    out = rt.predict({"values": x})
    assert set(out) == {"forecast"}  # cache outputs are not returned
    assert np.abs(out["forecast"] - _eager(model, x)).max() <= TOL
    s = rt.open_stream()
    assert np.abs(rt.append(s, x[0]) - out["forecast"][0, -1]).max() <= TOL
    assert np.abs(rt.predict(x[1:])["forecast"] - out["forecast"][1:]).max() == 0  # an array alone: the one input


def test_batched_stepping_is_one_call_and_equals_per_stream_stepping(ref):
    _, model = ref
    rng = np.random.default_rng(3)
    history = rng.normal(size=(5, 6)).astype(np.float32)
    nxt = rng.normal(size=(5, 2)).astype(np.float32)
    two = rng.normal(size=(7, 2)).astype(np.float32)
    with load(ref[0], device="cpu", batch_window_ms=300, max_batch=16) as rt:
        streams = [rt.open_stream() for _ in range(4)]
        pair = rt.open_stream(channels=2)
        short = rt.open_stream()
        for s, h in zip(streams, history):
            rt.append(s, h)
        rt.append(pair, two[:6])
        rt.append(short, history[4, :3])  # a different cache length: its own group
        calls = rt.stats()["model_calls"]
        futures = [rt.submit(s, v[:1]) for s, v in zip(streams, nxt)]
        futures.append(rt.submit(pair, two[6:]))
        futures.append(rt.submit(short, nxt[4, :1]))
        futures.append(rt.submit(streams[0], nxt[0, 1:]))  # a second append to one stream: next round, in order
        results = [f.result(10) for f in futures]
        stats = rt.stats()
    # 4 one-row streams and the 2-row stream share cache length 6: one call; the short stream one; the second
    # append of streams[0] one more
    assert stats["model_calls"] - calls == 3 and stats["batched_calls"] >= 1
    for i in range(4):
        want = _eager(model, np.concatenate([history[i], nxt[i, :1]])[None])[0, -1]
        assert np.abs(results[i].forecast - want).max() <= TOL
    want_pair = _eager(model, two.T)[:, -1].T
    assert results[4].forecast.shape == (5, 2) and np.abs(results[4].forecast - want_pair).max() <= TOL
    want_short = _eager(model, np.concatenate([history[4, :3], nxt[4, :1]])[None])[0, -1]
    assert np.abs(results[5].forecast - want_short).max() <= TOL
    want_second = _eager(model, np.concatenate([history[0], nxt[0]])[None])[0, -1]
    assert results[6].observed == 8 and np.abs(results[6].forecast - want_second).max() <= TOL


def test_streams_stepping_together_share_a_block_and_part_ways_exactly(ref):
    """The present of a batched step stays one block: the same streams stepping together again reuse it with no
    gather or scatter (in any order); a stream leaving the group splits it; every forecast equals eager's."""
    _, model = ref
    rng = np.random.default_rng(5)
    series = rng.normal(size=(4, 30)).astype(np.float32)
    seen = [0] * 4
    with load(ref[0], device="cpu", batch_window_ms=300, max_batch=16) as rt:
        calls = {"gather": 0, "scatter": 0}
        for name in calls:
            original = getattr(rt._cacheops, name)
            setattr(rt._cacheops, name, lambda *a, _o=original, _n=name: (calls.__setitem__(_n, calls[_n] + 1), _o(*a))[1])
        streams = [rt.open_stream() for _ in range(4)]

        def round_(members, n=1, order=None):
            futures = {}
            for i in order or members:
                futures[i] = rt.submit(streams[i], series[i, seen[i] : seen[i] + n])
            for i in members:
                got = futures[i].result(10).forecast
                seen[i] += n
                want = _eager(model, series[i : i + 1, : seen[i]])[0, -1]
                assert np.abs(got - want).max() <= TOL, (members, i)

        round_([0, 1, 2, 3], n=5)  # from empty caches: one block of 4
        block = rt.get_stream(streams[0])._block
        assert [m.id for m in block.members] == [s.id for s in streams]
        round_([0, 1, 2, 3], order=[2, 0, 3, 1])  # the same streams, arriving in another order: reused as is
        assert calls == {"gather": 0, "scatter": 0}
        round_([1])  # stream 1 alone: the block splits, every member gets its own cache
        assert calls == {"gather": 0, "scatter": 1}
        round_([0, 2, 3])  # same length again: their own caches gathered into a new block
        assert calls == {"gather": 1, "scatter": 1}
        round_([0, 2, 3])
        assert calls == {"gather": 1, "scatter": 1}
        rt.close(streams[2])  # a member leaves: the others step on without it
        round_([0, 3])
        round_([0, 3])
        assert calls == {"gather": 2, "scatter": 2}


def test_a_stream_closed_while_its_batch_waits_fails_alone(ref):
    with load(ref[0], device="cpu", batch_window_ms=300, max_batch=8) as rt:
        a, b, c = rt.open_stream(), rt.open_stream(), rt.open_stream()
        for s in (a, b, c):
            rt.append(s, [1.0, 2.0])
        gate, taken = threading.Event(), threading.Event()
        step = rt._step

        def held(group):
            taken.set()
            gate.wait(10)
            step(group)

        rt._step = held
        futures = [rt.submit(s, 3.0) for s in (a, b, c)]
        assert taken.wait(10)  # the worker took all three into one group
        rt.close(b)
        gate.set()
        assert futures[0].result(10).observed == 3 and futures[2].result(10).observed == 3
        with pytest.raises(UnknownStream, match="closed before its append ran"):
            futures[1].result(10)
        assert rt.stats()["batched_calls"] == 1


def test_the_cache_stays_in_ortvalues_on_the_device_without_numpy_round_trips(ref, rt, monkeypatch):
    s, t = rt.open_stream(), rt.open_stream()
    rt.append(s, [1.0, 2.0, 3.0])
    rt.append(t, [3.0, 2.0, 1.0])
    calls = {"to_device": 0, "to_numpy": 0}
    from_numpy, to_numpy = ort.OrtValue.ortvalue_from_numpy, ort.OrtValue.numpy

    def counted_from_numpy(*args, **kwargs):
        calls["to_device"] += 1
        return from_numpy(*args, **kwargs)

    def counted_numpy(self):
        calls["to_numpy"] += 1
        return to_numpy(self)

    monkeypatch.setattr(ort.OrtValue, "ortvalue_from_numpy", staticmethod(counted_from_numpy))
    monkeypatch.setattr(ort.OrtValue, "numpy", counted_numpy)
    rt.append(s, 4.0)
    assert calls == {"to_device": 1, "to_numpy": 1}  # the new value in, the forecast out; the caches neither way
    futures = [rt.submit(s, 5.0), rt.submit(t, 4.0)]  # batched when both queue before the worker runs: same counts
    [f.result(10) for f in futures]
    assert calls["to_device"] <= 3 and calls["to_numpy"] <= 3
    block = rt.get_stream(s)._block
    assert len(block.tensors) == 4  # 2 layers x (key, value)
    assert all(isinstance(v, ort.OrtValue) and v.device_name() == "cpu" for v in block.tensors)
    rows = sum(m.rows for m in block.members)  # 1, or 2 when s and t stepped together and share a block
    assert block.tensors[0].shape() == [rows, 2, 5, 8]  # (batch, kv_heads, length, head_dim)


def test_cacheops_graphs_pass_the_onnx_checker():
    import onnx

    for model in (concat_model(3, 4), split_model(2, 4, "float16")):
        onnx.checker.check_model(onnx.load_from_string(model), full_check=True)


# ---------------------------------------------------------------------------------------------------- eviction


def test_max_streams_evicts_the_least_recently_used_idle_stream(ref):
    with load(ref[0], device="cpu", max_streams=2) as rt:
        a, b = rt.open_stream(), rt.open_stream()
        rt.append(a, 1.0)  # a is now more recent than b
        c = rt.open_stream()
        with pytest.raises(StreamEvicted, match="max_streams"):
            rt.append(b, 1.0)
        rt.append(a, 2.0)
        rt.append(c, 2.0)
        assert rt.stats()["evictions"] == {"max_streams": 1} and rt.stats()["active_streams"] == 2


def test_max_streams_with_every_stream_busy_is_too_many_streams(ref):
    with load(ref[0], device="cpu", max_streams=1) as rt:
        a = rt.open_stream()
        gate = threading.Event()
        step = rt._step
        monkey = lambda group: (gate.wait(10), step(group))  # noqa: E731
        rt._step = monkey
        future = rt.submit(a, 1.0)
        with pytest.raises(TooManyStreams) as info:
            rt.open_stream()
        assert info.value.status == 429 and info.value.retry_after > 0
        gate.set()
        future.result(10)


def test_the_byte_budget_evicts_least_recently_used_streams(ref):
    manifest = load_manifest(ref[0])
    per_position = manifest.cache.bytes_per_position(4)
    with load(ref[0], device="cpu", max_cache_bytes=per_position * 20) as rt:
        a, b = rt.open_stream(), rt.open_stream()
        rt.append(a, np.ones(12))
        assert rt.stats()["cache_bytes"] == per_position * 12
        rt.append(b, np.ones(12))  # 24 positions > 20: a, the least recently used, goes
        assert rt.stats()["cache_bytes"] == per_position * 12
        with pytest.raises(StreamEvicted, match="max_cache_bytes"):
            rt.append(a, 1.0)
        rt.close(b)
        assert rt.stats()["cache_bytes"] == 0
        with pytest.raises(InputError, match="max_cache_bytes"):
            rt.open_stream(channels=2)  # 2 x 16 positions can never fit in 20


def test_idle_streams_expire_after_the_ttl(ref):
    clock = FakeClock()
    with load(ref[0], device="cpu", idle_ttl_s=10, clock=clock) as rt:
        a, b = rt.open_stream(), rt.open_stream()
        clock.t += 6
        rt.append(a, 1.0)
        clock.t += 6  # b idle 12 s, a idle 6 s
        assert rt.sweep() == 1
        with pytest.raises(StreamEvicted, match="idle for more than 10 s"):
            rt.append(b, 1.0)
        rt.append(a, 2.0)
        clock.t += 10.5
        with pytest.raises(StreamEvicted):  # swept lazily by the call itself
            rt.append(a, 3.0)
        assert rt.stats()["evictions"] == {"idle_ttl": 2}


def test_closed_and_unknown_streams(rt):
    s = rt.open_stream()
    rt.close(s)
    with pytest.raises(UnknownStream, match="never opened, or closed"):
        rt.append(s, 1.0)
    with pytest.raises(UnknownStream):
        rt.close("0123")


def test_a_full_queue_is_overloaded_with_a_retry_after(ref):
    with load(ref[0], device="cpu", max_pending=1) as rt:
        a, b, c = rt.open_stream(), rt.open_stream(), rt.open_stream()
        gate, started = threading.Event(), threading.Event()
        step = rt._step

        def slow(group):
            started.set()
            gate.wait(10)
            step(group)

        rt._step = slow
        first = rt.submit(a, 1.0)
        assert started.wait(10)  # the worker holds the first append
        second = rt.submit(b, 1.0)  # queued: the queue is full
        with pytest.raises(Overloaded) as info:
            rt.submit(c, 1.0)
        assert info.value.status == 503 and info.value.retry_after > 0
        gate.set()
        first.result(10), second.result(10)


# ---------------------------------------------------------------------------------------------------- input checks


@pytest.mark.parametrize("values,error,match", [
    ([1.0, float("nan")], InputError, r"observations\[1\] is nan"),
    ([float("inf")], InputError, "finite"),
    ([1e39], InputError, "overflows float32"),
    (["1.5"], InputError, "got strings"),
    ([True, False], InputError, "got booleans"),
    ([[1.0], [2.0, 3.0]], InputError, "ragged"),
    ([[1.0, 2.0]], InputError, r"shape \(1, 2\); this stream takes \(n,\)"),
    ([], InputError, "empty"),
    (np.ones(2049), TooManyValues, "limit is 2048"),
])
def test_bad_observations_are_refused_naming_the_problem(rt, values, error, match):
    s = rt.open_stream()
    with pytest.raises(error, match=match):
        rt.append(s, values)
    assert s.observed == 0 and rt.stats()["model_calls"] == 0


def test_bad_predict_inputs_are_refused_naming_the_problem(ref):
    with load(ref[0], device="cpu", max_predict_values=50) as rt:
        for inputs, match in (
            ({"values": np.ones(5)}, r"1 dims \(5,\); the graph expects 2"),
            ({"values": np.ones((1, 0))}, "empty"),
            ({"x": np.ones((1, 3))}, r"unknown input\(s\) \['x'\]"),
            ({}, "missing input"),
            ({"values": [[1.0, float("nan")]]}, "finite"),
            ({"values": np.ones((2, 30))}, "max_predict_values"),
        ):
            with pytest.raises(InputError, match=match):
                rt.predict(inputs)
        with pytest.raises(NotSupported, match="no graph"):
            rt.predict({"values": np.ones((1, 2))}, graph="decoder")


def test_predict_on_a_cacheless_export_and_streams_refused(window):
    out, module = window
    with load(out, device="cpu") as rt:
        x = np.random.default_rng(4).normal(size=(3, 16, 3)).astype(np.float32)
        got = rt.predict(x)["y"]
        with torch.no_grad():
            want = module(torch.from_numpy(x)).numpy()
        assert got.shape == (3, 4, 3) and np.abs(got - want).max() <= TOL
        with pytest.raises(InputError, match=r"dim 1 is 15; the graph expects 16"):
            rt.predict(x[:, :15])
        with pytest.raises(NotSupported, match="no KV cache"):
            rt.open_stream()


# ---------------------------------------------------------------------------------------------------- loading


def test_tampered_truncated_and_changed_files_are_refused(ref, tmp_path):
    tampered = copy_export(ref[0], tmp_path / "tampered")
    data = bytearray((tampered / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tampered / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="model.onnx: sha256 .* was modified"):
        load(tampered, device="cpu")
    truncated = copy_export(ref[0], tmp_path / "truncated")
    (truncated / "model.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(ManifestError, match="truncated"):
        load(truncated, device="cpu")
    with pytest.raises(ManifestError, match="no manifest.json"):
        load(tmp_path, device="cpu")
    # changed between the manifest check and the session: the bytes given to ONNX Runtime are hashed again
    raced = copy_export(ref[0], tmp_path / "raced")
    manifest = load_manifest(raced)
    (raced / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="changed since the manifest was verified"):
        Runtime(manifest, device="cpu")


def test_device_cuda_is_refused_instead_of_falling_back_to_the_cpu(ref, monkeypatch):
    if device_mod.CUDA in ort.get_available_providers() and device_mod.gpu_visible():
        pytest.skip("a GPU is visible here: the refusal needs a machine without one")
    with pytest.raises(DeviceUnavailable, match="asked ONNX Runtime for CUDA device 0, got \\['CPUExecutionProvider'\\]"):
        load(ref[0], device="cuda")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(DeviceUnavailable, match="no CUDAExecutionProvider.*onnxruntime-gpu"):
        load(ref[0], device="cuda:1")
    with pytest.raises(ValueError, match="device must be"):
        load(ref[0], device="gpu")
    with load(ref[0]) as rt:  # auto: the CPU here, said so
        assert rt.device == "cpu" and rt.providers["model"] == ["CPUExecutionProvider"]


def test_cuda_placement_binds_caches_on_the_cuda_device(monkeypatch):
    """Without a GPU the CUDA path cannot run; its placement (providers, device ids for IO binding) is checked."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    where = device_mod.placement("cuda:1")
    assert where.kind == "cuda" and where.device_id == 1 and where.strict and where.name == "cuda:1"
    assert where.providers[0] == ("CUDAExecutionProvider", {"device_id": 1})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert device_mod.placement("auto").kind == "cpu"  # no visible GPU: CPU without trying (and logging) CUDA


def test_the_runtime_imports_neither_torch_nor_needs_it(ref):
    code = ("import sys, numpy as np; import tsattn.runtime as r; import tsattn.runtime.server; "
            f"rt = r.load({str(ref[0])!r}, device='cpu'); s = rt.open_stream(); f = rt.append(s, [1.0, 2.0]); "
            "rt.shutdown(); print(f.shape, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["(5,)", "False"]


def test_options_are_checked(ref):
    for kwargs, match in (({"max_streams": 0}, "max_streams"), ({"batch_window_ms": -1}, "batch_window_ms"),
                          ({"max_cache_bytes": 0}, "max_cache_bytes"), ({"idle_ttl_s": 0}, "idle_ttl_s"),
                          ({"threads": 0}, "threads"), ({"max_append": 0}, "max_append")):
        with pytest.raises(ValueError, match=match):
            load(ref[0], device="cpu", **kwargs)


def test_shutdown_fails_queued_appends(ref):
    rt = load(ref[0], device="cpu", batch_window_ms=10_000, max_batch=8)
    s = rt.open_stream()
    future = rt.submit(s, 1.0)
    time.sleep(0.05)
    rt.shutdown()
    with pytest.raises(Overloaded, match="shutting down"):
        future.result(10)
