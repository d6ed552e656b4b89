"""Export to TorchScript and ONNX with parity checks and a manifest (``tsattn-export``).

    manifest.py    manifest.json: TensorSpec, GraphSpec, CacheSpec, Manifest, load_manifest (standard library only:
                   the runtime reads exports without torch)
    spec.py        ExportSpec (declarative, in the manner of optimum's OnnxConfig), Exportable, FlatCache
    models.py      export specs and builders of the bundled models (MODELS: reference)
    targets.py     registry of patched-target export specs (TARGETS) and what their builders share
                   (open_patched, PatchedTarget, target_code, TargetError)
    calf.py        the CALF wcmha spec: x (batch, seq_len, channels) -> forecast = CALF's outputs_time, stateless
    checkpoint.py  torch.load(weights_only=True) or refusal
    exporter.py    the one export loop: trace, check the graph's contract, parity, manifest, atomic rename
    cli.py         tsattn-export
    triton.py      --triton-repo: a Triton model repository entry (ONNX Runtime backend, implicit state)
    triton_python.py  --triton-backend python: an entry whose model.py (triton_python_model.py, copied verbatim)
                   runs the graph with ONNX Runtime and keeps each sequence's cache

This package's ``__init__`` imports nothing, so that ``tsattn.export.manifest`` stays importable without torch.
"""
