"""Export to TorchScript and ONNX with parity checks and a manifest (``tsattn-export``)."""
