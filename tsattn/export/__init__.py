"""Export to TorchScript and ONNX with parity checks and a manifest (``tsattn-export``).

    manifest.py    manifest.json: TensorSpec, GraphSpec, CacheSpec, Manifest, load_manifest (standard library only:
                   the runtime reads exports without torch)
    spec.py        ExportSpec (declarative, in the manner of optimum's OnnxConfig), Exportable, FlatCache
    models.py      export specs and builders of the bundled models (MODELS: reference)
    targets.py     export specs of patched target repositories (TARGETS; filled as recipes land)
    checkpoint.py  torch.load(weights_only=True) or refusal
    exporter.py    the one export loop: trace, check the graph's contract, parity, manifest, atomic rename
    cli.py         tsattn-export

This package's ``__init__`` imports nothing, so that ``tsattn.export.manifest`` stays importable without torch.
"""
