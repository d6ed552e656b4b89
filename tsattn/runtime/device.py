"""Execution providers: which device a session runs on, and the proof that it really does.

ONNX Runtime silently falls back to the CPU when a requested provider cannot be created (onnxruntime-gpu on a
machine without a GPU or without the CUDA libraries lists ``CUDAExecutionProvider`` as available and still runs on
the CPU). So the providers a session really got (``session.get_providers()``) are read back after it is created,
logged, and checked: ``device="cuda"`` raises ``DeviceUnavailable`` rather than serving from the CPU.

    device="auto"      CUDA when this onnxruntime has the CUDA provider and a GPU is visible, else CPU
    device="cpu"       CPU
    device="cuda[:N]"  CUDA device N (default 0), or ``DeviceUnavailable``
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple, Union

log = logging.getLogger("tsattn.runtime")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class DeviceUnavailable(RuntimeError):
    """The requested device cannot be used (no CUDA provider in this onnxruntime, no GPU, missing CUDA libraries)."""


@dataclass(frozen=True)
class Placement:
    """Where sessions run: ``kind`` "cpu" or "cuda", ``device_id``, the providers to ask for, and whether a
    fallback to the CPU is acceptable (``device="auto"``)."""

    kind: str
    device_id: int
    providers: Tuple
    strict: bool

    @property
    def name(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.device_id}"


def parse_device(device: str) -> Tuple[str, int]:
    """``"auto" | "cpu" | "cuda" | "cuda:N"`` -> (kind, device id); ``ValueError`` naming the argument otherwise."""
    text = str(device).strip().lower()
    if text in ("auto", "cpu", "cuda"):
        return text, 0
    if text.startswith("cuda:"):
        index = text[5:]
        if index.isdigit():
            return "cuda", int(index)
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {device!r}")


def gpu_visible() -> bool:
    """A cheap look for an NVIDIA GPU before asking ONNX Runtime for CUDA (whose failed attempt logs errors).

    ``CUDA_VISIBLE_DEVICES`` set to nothing or -1 hides every GPU. On Linux the driver lists GPUs under
    ``/proc/driver/nvidia/gpus`` (``/dev/nvidia0`` in containers without /proc entries); elsewhere assume yes and
    let ``session.get_providers()`` decide.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    if os.name == "posix" and Path("/proc").is_dir():
        gpus = Path("/proc/driver/nvidia/gpus")
        return (gpus.is_dir() and any(gpus.iterdir())) or Path("/dev/nvidia0").exists()
    return True


def placement(device: str = "auto") -> Placement:
    """The providers to request for ``device`` (see the module docstring); raises ``DeviceUnavailable`` when
    ``device`` names CUDA and this onnxruntime has no CUDA provider."""
    import onnxruntime as ort

    kind, device_id = parse_device(device)
    available = ort.get_available_providers()
    has_cuda = CUDA in available
    if kind == "cuda" and not has_cuda:
        raise DeviceUnavailable(f"device {device!r}: this onnxruntime ({ort.__version__}) has no "
                                f"CUDAExecutionProvider (available: {available}); install onnxruntime-gpu")
    if kind == "cuda" or (kind == "auto" and has_cuda and gpu_visible()):
        providers = ((CUDA, {"device_id": device_id}), CPU)
        return Placement("cuda", device_id, providers, strict=(kind == "cuda"))
    return Placement("cpu", 0, (CPU,), strict=False)


def session_options(threads: Optional[int] = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ONNX Runtime's own warnings are not the user's business
    return options


def open_session(model: Union[str, bytes, Path], where: Placement, threads: Optional[int] = None,
                 label: str = "model"):
    """An ``InferenceSession`` for ``model`` (a path or the model's bytes) on ``where``; returns
    ``(session, placement actually used)``. Logs the providers the session really got; a CUDA placement that
    came back without CUDA raises ``DeviceUnavailable`` when strict, else falls back to a CPU placement (logged)."""
    import onnxruntime as ort

    source = str(model) if isinstance(model, Path) else model
    session = ort.InferenceSession(source, session_options(threads), providers=list(where.providers))
    got = session.get_providers()
    if where.kind == "cuda" and (not got or got[0] != CUDA):
        message = (f"session {label!r}: asked ONNX Runtime for CUDA device {where.device_id}, got {got} (no usable "
                   f"GPU, or the CUDA/cuDNN libraries onnxruntime-gpu needs are missing; ONNX Runtime's log above "
                   f"says which)")
        if where.strict:
            raise DeviceUnavailable(message)
        log.warning("%s; serving on the CPU", message)
        where = Placement("cpu", 0, (CPU,), strict=False)
    log.info("session %r: ONNX Runtime providers %s (device %s)", label, got, where.name)
    return session, where


def providers_of(session) -> List[str]:
    return list(session.get_providers())


__all__ = ["CPU", "CUDA", "DeviceUnavailable", "Placement", "gpu_visible", "open_session", "parse_device",
           "placement"]
