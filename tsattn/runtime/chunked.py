"""A long input through the cache graph in chunks, each chunk's ``present`` caches fed back as the next one's
``past`` on the device (IO binding), so that a call's memory is bounded (``tsattn.runtime.limits``).

    outs, presents = run_cached(session, "values", values, past, cache.past_names(), cache.present_names(),
                                fetch=["forecast"], device="cpu", device_id=0, chunk=256)

``values``: ``(rows, n, *features)`` numpy; ``past``: the cache tensors before it (OrtValues on the device, or
numpy arrays); ``outs[k]``: the fetched outputs of chunk k (numpy, on the host); ``presents``: the caches after
the last chunk (OrtValues on the device). One chunk (``chunk >= n``) is exactly one session call.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np


def run_cached(session, input_name: str, values: np.ndarray, past: Sequence[Any], past_names: Sequence[str],
               present_names: Sequence[str], fetch: Sequence[str], device: str, device_id: int,
               chunk: int) -> Tuple[List[Dict[str, np.ndarray]], List[Any]]:
    import onnxruntime as ort

    n = values.shape[1]
    chunk = max(1, int(chunk))
    outs: List[Dict[str, np.ndarray]] = []
    past = [p if isinstance(p, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(p), device,
                                                                                   device_id) for p in past]
    for start in range(0, n, chunk):
        piece = values if chunk >= n else np.ascontiguousarray(values[:, start : start + chunk])
        io = session.io_binding()
        io.bind_ortvalue_input(input_name, ort.OrtValue.ortvalue_from_numpy(piece, device, device_id))
        for name, value in zip(past_names, past):
            io.bind_ortvalue_input(name, value)
        for name in fetch:
            io.bind_output(name, "cpu")  # outputs go to the host; the caches stay on the device
        for name in present_names:
            io.bind_output(name, device, device_id)
        session.run_with_iobinding(io)
        got = io.get_outputs()
        outs.append({name: got[i].numpy() for i, name in enumerate(fetch)})
        past = list(got[len(fetch) :])
    return outs, past


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


__all__ = ["finite_rows", "run_cached"]
