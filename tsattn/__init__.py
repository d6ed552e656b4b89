"""tsattn: modern attention for existing time-series research code, from injection to serving.

Subpackages:
    tsattn.modules   self-contained PyTorch templates (WCMHA, MHA/MQA/GQA with KV cache, ...)
    tsattn.injector  libcst engine and per-target recipes (``tsattn-inject``)
    tsattn.export    TorchScript / ONNX export with parity checks (``tsattn-export``)
    tsattn.runtime   ONNX Runtime sessions, streams and the server (``tsattn-serve``)
"""

__version__ = "0.1.0"
