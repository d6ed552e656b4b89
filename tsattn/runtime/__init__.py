"""ONNX Runtime sessions, per-stream KV-cache state and the server (``tsattn-serve``)."""
