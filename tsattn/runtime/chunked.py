"""A long input through the cache graph in chunks, each chunk's ``present`` caches fed back as the next one's
``past`` on the device (IO binding), so that a call's memory is bounded (``tsattn.runtime.limits``).

    outs, presents = run_cached(session, {"values": (values, 1)}, past, cache.past_names(), cache.present_names(),
                                fetch=["forecast"], device="cpu", device_id=0, chunk=256)

``inputs``: name -> (numpy array with the rows first, its time axis), e.g. ``values`` ``(rows, n, *features)``
on axis 1; ``past``: the cache tensors before it (OrtValues on the device, or numpy arrays); ``outs[k]``: the
fetched outputs of chunk k (numpy, on the host; ``joined`` concatenates them); ``presents``: the caches after the
last chunk (OrtValues on the device). One chunk (``chunk >= n``) is exactly one session call.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np


def run_cached(session, inputs: Mapping[str, Tuple[np.ndarray, int]], past: Sequence[Any], past_names: Sequence[str],
               present_names: Sequence[str], fetch: Sequence[str], device: str, device_id: int, chunk: int,
               fixed: Optional[Mapping[str, Any]] = None,
               position: Optional[Tuple[str, int]] = None) -> Tuple[List[Dict[str, np.ndarray]], List[Any]]:
    """``inputs``: step input name -> (array, rows first, and its time axis); every input is cut into chunks of
    ``chunk`` steps along its own time axis. ``fixed``: inputs bound as they are on every call (an
    encoder-decoder's encoder outputs; OrtValues or numpy). ``position``: (input name, the first step's absolute
    position) for a graph that takes its start position (each chunk's is the first's plus the steps before it)."""
    import onnxruntime as ort

    def value(a):
        return a if isinstance(a, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a),
                                                                                      device, device_id)

    first, axis = next(iter(inputs.values()))
    n = first.shape[axis]
    chunk = max(1, int(chunk))
    outs: List[Dict[str, np.ndarray]] = []
    past = [value(p) for p in past]
    fixed = {k: value(v) for k, v in (fixed or {}).items()}
    for start in range(0, n, chunk):
        io = session.io_binding()
        for name, (array, ax) in inputs.items():
            piece = array if chunk >= n else np.take(array, range(start, min(start + chunk, n)), axis=ax)
            io.bind_ortvalue_input(name, value(piece))
        for name, v in fixed.items():
            io.bind_ortvalue_input(name, v)
        if position is not None:
            io.bind_cpu_input(position[0], np.asarray(position[1] + start, dtype=np.int64))
        for name, v in zip(past_names, past):
            io.bind_ortvalue_input(name, v)
        for name in fetch:
            io.bind_output(name, "cpu")  # outputs go to the host; the caches stay on the device
        for name in present_names:
            io.bind_output(name, device, device_id)
        session.run_with_iobinding(io)
        got = io.get_outputs()
        outs.append({name: got[i].numpy() for i, name in enumerate(fetch)})
        past = list(got[len(fetch) :])
    return outs, past


def joined(outs: Sequence[Mapping[str, np.ndarray]], axes: Mapping[str, int]) -> Dict[str, np.ndarray]:
    """The chunks' outputs joined along each output's time axis (``axes``: name -> axis)."""
    return {n: outs[0][n] if len(outs) == 1 else np.concatenate([o[n] for o in outs], axis=ax)
            for n, ax in axes.items()}


def finite_rows(arrays: Sequence[np.ndarray], rows: int) -> np.ndarray:
    """Per row (the leading axis when it has ``rows`` entries), whether every value of ``arrays`` is finite; an
    array whose leading axis is not the rows counts for all of them."""
    ok = np.ones(rows, dtype=bool)
    for a in arrays:
        if a.dtype.kind not in "fc":
            continue
        if a.ndim and a.shape[0] == rows:
            ok &= np.isfinite(a.reshape(rows, -1)).all(axis=1)
        elif not np.isfinite(a).all():
            ok[:] = False
    return ok


__all__ = ["finite_rows", "joined", "run_cached"]
