"""A Triton Python-backend entry for an export (``tsattn-export ... --triton-repo DIR --triton-backend python``):
for Triton servers without the ONNX Runtime backend (the ``tritonserver`` that the ``nvidia-pytriton`` wheel ships
has only the Python backend), and for CPU machines.

    DIR/<name>/config.pbtxt             backend "python"; with a KV cache: sequence_batching (Direct), controls
    DIR/<name>/1/model.py               tsattn/export/triton_python_model.py, verbatim
    DIR/<name>/1/model.onnx             the export's graph as it is (cache inputs and outputs included)
    DIR/<name>/1/tsattn_stream.json     what model.py needs of the manifest: inputs, outputs, cache tensors

The client sees what the ONNX Runtime backend entry (``tsattn.export.triton``) shows it: the graph's tensors
without the cache, ``max_batch_size: 0``, and a sequence per stream with ``sequence_id``, ``sequence_start`` and
``sequence_end``; the same client code drives both entries and ``tsattn-serve``'s ``/v2`` API. The difference is
where the cache lives: here in the model instance (``model.py`` keeps each sequence's ``present`` tensors by
correlation id), not as Triton's implicit state, which the Python backend does not offer. The Direct strategy
with ``max_batch_size: 0`` gives an instance one sequence at a time; ``instances`` instances serve that many
sequences at once (further sequences wait for a free slot).

``python_env``: a virtual environment (a directory or a conda-pack'ed tarball) with numpy and onnxruntime for the
backend's stub, written as the config's ``EXECUTION_ENV_PATH``; None: the stub's own Python must have them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

from tsattn.export.manifest import GraphSpec, Manifest

TEMPLATE = Path(__file__).with_name("triton_python_model.py")
STREAM_FILE = "tsattn_stream.json"  # the name triton_python_model.STREAM_FILE reads


def stream_spec(manifest: Manifest, graph: GraphSpec) -> Dict[str, Any]:
    """The contents of ``tsattn_stream.json``: the graph's file, its inputs and outputs without the cache, the
    input whose first dim is the batch, the cache tensors (past, present, heads, dim), dtype and capacity, and the
    position input (the task's ``position``: the sequence's step count before a request, which model.py feeds)."""
    cache = manifest.cache if manifest.cache is not None and manifest.cache.graph == graph.name else None
    position = manifest.task.position if cache is not None else None  # the step count, fed by model.py
    hidden = set(cache.past_names()) | set(cache.present_names()) | {position} if cache else set()
    inputs = [t for t in graph.inputs if t.name not in hidden]
    spec: Dict[str, Any] = {"model": "model.onnx", "inputs": [t.name for t in inputs],
                            "outputs": [t.name for t in graph.outputs if t.name not in hidden], "cache": None,
                            "position": None}
    if cache is not None:
        batch = [t.name for t in inputs if t.shape and t.shape[0] == cache.batch_dim]
        if not batch:
            from tsattn.export.triton import TritonRepoError

            raise TritonRepoError(f"graph {graph.name!r} has no input whose first dim is {cache.batch_dim!r}")
        spec["batch_input"] = batch[0]
        if position is not None:
            first = manifest.task.inputs[0]
            spec["position"] = {"name": position, "dtype": graph.input(position).dtype, "input": first.name,
                                "time_axis": first.time_axis}
        spec["cache"] = {"dtype": cache.dtype, "sliding": cache.sliding, "max_context": cache.max_context,
                         "tensors": [{"past": t.past, "present": t.present, "heads": t.heads, "dim": t.dim}
                                     for t in cache.cache_tensors()]}
    return spec


def python_config(name: str, graph: GraphSpec, spec: Dict[str, Any], instances: int, idle_s: float, header: str,
                  python_env: Optional[str]) -> str:
    """config.pbtxt text of the Python-backend entry."""
    from tsattn.export.triton import _io_block

    inputs = [graph.input(n) for n in spec["inputs"]]
    outputs = [graph.output(n) for n in spec["outputs"]]
    text = (f'{header}name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n'
            + _io_block("input", inputs, skip_batch=False) + _io_block("output", outputs, skip_batch=False))
    if spec["cache"] is not None:
        controls = [f'    {{\n      name: "{n}"\n      control [ {{ kind: {k} int32_false_true: [ 0, 1 ] }} ]\n    }}'
                    for n, k in (("START", "CONTROL_SEQUENCE_START"), ("END", "CONTROL_SEQUENCE_END"))]
        controls.append('    {\n      name: "CORRID"\n      control [ { kind: CONTROL_SEQUENCE_CORRID data_type: '
                        'TYPE_UINT64 } ]\n    }')
        text += ("sequence_batching {\n"
                 f"  max_sequence_idle_microseconds: {int(idle_s * 1e6)}\n"
                 "  direct { }\n"
                 "  control_input [\n" + ",\n".join(controls) + "\n  ]\n}\n")
    text += f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]\n"
    text += 'parameters: { key: "threads" value: { string_value: "1" } }\n'
    if python_env:
        env = json.dumps(str(python_env))
        text += f'parameters: {{ key: "EXECUTION_ENV_PATH" value: {{ string_value: {env} }} }}\n'
    return text


def write_entry(tmp: Path, manifest: Manifest, graph_name: str, name: str, instances: int, idle_s: float,
                header: str, python_env: Optional[str] = None) -> None:
    """Write the entry's files into ``tmp`` (the writer renames it into place)."""
    graph = manifest.graphs[graph_name]
    if len(manifest.graphs) > 1:
        from tsattn.export.triton import TritonRepoError

        raise TritonRepoError(f"export {manifest.name!r} has {len(manifest.graphs)} graphs {sorted(manifest.graphs)}; "
                              f"the Python-backend entry runs one graph")
    if any(f.format == "data" and f.graph == graph_name for f in manifest.files):
        from tsattn.export.triton import TritonRepoError

        raise TritonRepoError(f"graph {graph_name!r} keeps its weights in external data files; the Python-backend "
                              f"entry copies one model.onnx")
    spec = stream_spec(manifest, graph)
    version = tmp / "1"
    version.mkdir()
    shutil.copyfile(manifest.graph_file(graph_name, "onnx"), version / "model.onnx")
    shutil.copyfile(TEMPLATE, version / "model.py")
    (version / STREAM_FILE).write_text(json.dumps(spec, indent=1) + "\n")
    (tmp / "config.pbtxt").write_text(python_config(name, graph, spec, instances, idle_s, header, python_env))


__all__ = ["STREAM_FILE", "TEMPLATE", "python_config", "stream_spec", "write_entry"]
