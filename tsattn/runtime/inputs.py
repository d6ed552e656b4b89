"""Input validation of the runtime: appends (named step inputs or the values form), encoder inputs and predict
inputs checked against the manifest (names, ranks, fixed dims, symbolic dims that agree, dtypes, finite numbers,
limits), each refusal an ``InputError`` or ``TooManyValues`` naming the input, axis or limit. ``InputChecks`` is a
base of ``tsattn.runtime.engine.Runtime`` (it reads the runtime's ``max_append``, manifest and stream graph).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Mapping, Sequence, Tuple

import numpy as np

from tsattn.export.manifest import TensorSpec
from tsattn.runtime.errors import InputError, TooManyValues

if TYPE_CHECKING:
    from tsattn.runtime.sessions import _StreamGraph

_NUMERIC_KINDS = "iuf"  # numpy kinds accepted as numbers: signed, unsigned, float (not bool, str, object)


class InputChecks:
    """Checks of what callers hand the runtime (see the module docstring)."""

    @staticmethod
    def _numbers(data: Any, what: str) -> np.ndarray:
        try:
            arr = np.asarray(data)
        except (ValueError, TypeError) as exc:  # ragged nesting
            detail = "ragged nesting" if "inhomogeneous" in str(exc) else str(exc).splitlines()[0][:200]
            raise InputError(f"{what}: not a rectangular array of numbers ({detail})") from None
        if arr.dtype.kind not in _NUMERIC_KINDS:
            kind = {"b": "booleans", "U": "strings", "S": "bytes", "O": "a ragged or mixed array"}.get(
                arr.dtype.kind, str(arr.dtype))
            raise InputError(f"{what}: expected numbers, got {kind}")
        return arr

    @staticmethod
    def _finite(arr: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
        """``arr`` cast to ``dtype``; ``InputError`` naming the first NaN/Inf, before or after the cast."""
        if arr.dtype.kind == "f":
            bad = ~np.isfinite(arr)
            if bad.any():
                index = tuple(int(i) for i in np.argwhere(bad)[0])
                raise InputError(f"{what}{list(index)} is {float(arr[index])!r}: values must be finite (no NaN or "
                                 f"Inf)")
        if np.dtype(dtype).kind == "f":
            with np.errstate(over="ignore"):
                cast = arr.astype(dtype)
            bad = ~np.isfinite(cast)
            if bad.any():
                index = tuple(int(i) for i in np.argwhere(bad)[0])
                raise InputError(f"{what}{list(index)} = {float(arr[index])!r} overflows {np.dtype(dtype).name}")
            return cast
        if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
            raise InputError(f"{what}: expected integers for a {np.dtype(dtype).name} tensor")
        info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
        if info is not None and arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise InputError(f"{what}: values outside the range of {np.dtype(dtype).name}")
        return arr.astype(dtype)

    def _step_inputs(self, observations: Any, rows: int, sg: _StreamGraph) -> Tuple[Dict[str, np.ndarray], int]:
        """An append's step inputs in the graph's layout (rows on axis 0) and the number of new steps."""
        if isinstance(observations, Mapping):
            arrays = self._batched(observations, [t for t, _ in sg.inputs], rows, "input")
            n = int(next(iter(arrays.values())).shape[sg.inputs[0][1]])
            if n == 0:
                raise InputError("inputs are empty: append at least one step")
            if n > self.max_append:
                raise TooManyValues(f"{n} steps in one append; the limit is {self.max_append} (max_append)")
            return arrays, n
        if sg.features is None:
            raise InputError(f"export {self.name!r} takes the step inputs {[t.name for t, _ in sg.inputs]}: pass a "
                             f"mapping of input name -> array (inputs=...)")
        arr = self._observations(observations, rows, sg)
        return {sg.inputs[0][0].name: arr}, int(arr.shape[1])

    def _batched(self, inputs: Mapping[str, Any], specs: Sequence[TensorSpec], rows: int,
                 what: str) -> Dict[str, np.ndarray]:
        """Named arrays of one stream (no batch axis for one row, a leading axis of ``rows`` for several) checked
        against ``specs`` (names, dims, dtypes, finite) and returned in the graph's layout, batch first."""
        names = [t.name for t in specs]
        unknown = sorted(set(inputs) - set(names))
        if unknown:
            raise InputError(f"unknown {what}(s) {unknown}; this export takes {names}")
        missing = [n for n in names if n not in inputs]
        if missing:
            raise InputError(f"missing {what}(s) {missing}; this export takes {names}")
        sizes: Dict[str, int] = {}
        out = {}
        for t in specs:
            arr = self._numbers(inputs[t.name], f"{what} {t.name!r}") if t.numpy_dtype.kind != "b" else \
                np.asarray(inputs[t.name])
            if rows == 1:
                if arr.ndim != len(t.shape) - 1:
                    raise InputError(f"{what} {t.name!r} has shape {tuple(arr.shape)}; a stream takes "
                                     f"{list(t.shape[1:])} (the graph's {list(t.shape)} without the batch)")
                arr = arr[None]
            out[t.name] = self._tensor(arr, t, sizes, f"{what} {t.name!r}")
        batch = self._stream_graph.cache.batch_dim if self._stream_graph else "batch"
        if sizes.get(batch, rows) != rows:
            raise InputError(f"{what}s have {sizes[batch]} rows; the stream has {rows} (channels)")
        return out

    def _observations(self, observations: Any, rows: int, sg: _StreamGraph) -> np.ndarray:
        arr = self._numbers(observations, "observations")
        features = sg.features
        if rows == 1 and arr.ndim == len(features):
            arr = arr[None]  # a single observation
        expected = ("n",) + ((rows,) if rows > 1 else ()) + features
        if arr.ndim != len(expected) or tuple(arr.shape[1:]) != tuple(expected[1:]):
            shape = "(" + ", ".join(str(d) for d in expected) + ("," if len(expected) == 1 else "") + ")"
            raise InputError(f"observations have shape {tuple(arr.shape)}; this stream takes {shape}"
                             + (" (n values, channels)" if rows > 1 else ""))
        n = arr.shape[0]
        if n == 0:
            raise InputError("observations are empty: append at least one value")
        if n > self.max_append:
            raise TooManyValues(f"{n} observations in one append; the limit is {self.max_append} (max_append)")
        arr = self._finite(arr, sg.inputs[0][0].numpy_dtype, "observations")
        if rows > 1:
            arr = np.moveaxis(arr, 1, 0)  # (rows, n, *features)
        else:
            arr = arr[None]
        return np.ascontiguousarray(arr)

    def _tensor(self, data: Any, spec: TensorSpec, sizes: Dict[str, int], what: str) -> np.ndarray:
        arr = self._numbers(data, what) if spec.numpy_dtype.kind != "b" else np.asarray(data)
        if spec.numpy_dtype.kind == "b" and arr.dtype.kind != "b":
            raise InputError(f"{what}: expected booleans, got {arr.dtype}")
        if arr.ndim != len(spec.shape):
            raise InputError(f"{what} has {arr.ndim} dims {tuple(arr.shape)}; the graph expects {len(spec.shape)} "
                             f"{list(spec.shape)}")
        for axis, (dim, size) in enumerate(zip(spec.shape, arr.shape)):
            if isinstance(dim, int):
                if size != dim:
                    raise InputError(f"{what} dim {axis} is {size}; the graph expects {dim} (shape {list(spec.shape)})")
            elif dim in sizes and sizes[dim] != size:
                raise InputError(f"{what} dim {axis} ({dim!r}) is {size}, but another input has {dim}={sizes[dim]}")
            else:
                if size == 0 and dim != (self.manifest.cache.past_dim if self.manifest.cache else None):
                    raise InputError(f"{what} dim {axis} ({dim!r}) is empty")
                sizes[dim] = size
        if spec.numpy_dtype.kind == "b":
            return np.ascontiguousarray(arr)
        return np.ascontiguousarray(self._finite(arr, spec.numpy_dtype, what))


__all__ = ["InputChecks"]
