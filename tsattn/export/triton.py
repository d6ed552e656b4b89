"""A Triton Inference Server model repository for an export (``tsattn-export ... --triton-repo DIR``).

    DIR/<name>/config.pbtxt     ONNX Runtime backend; with a KV cache: sequence_batching with implicit state
    DIR/<name>/1/model.onnx     the export's graph; with a cache, wrapped for Triton (below)

**Streaming exports (a KV cache).** Triton keeps each sequence's cache as implicit state, one state per cache
tensor (``cache.cache_tensors()``: a uniform cache's keys and values, or every tensor of a cache given tensor by
tensor, each with its own heads and dim): the ``present.*`` outputs of one request are the ``past_key_values.*``
inputs of the sequence's next request, and the client sends only the new steps' inputs (the task's step inputs,
e.g. the reference's ``values``, Hephaestus' ``numeric_inputs`` and ``categorical_inputs``) with a sequence id
(``sequence_start`` on the first request, ``sequence_end`` on the last). An export whose graph needs more than
request inputs and states is refused before anything is written (``unsupported``: e.g. a scalar input). A graph
that takes its start position (``task.position``, a sliding seed 002 graph) gets one more state, the step count
(``POSITION_STATE``), which the wrapped graph feeds it. An encoder-decoder's encoder runs inside the wrapped graph when ``START`` is 1, on its own inputs
(``source``: request inputs of every request, read at the start only, so later requests may send one zero step),
and the encoder outputs that feed the steps (the cross-attention keys and values) are states too
(``cross_state_names``), kept for the sequence like the cache.
Three Triton facts shape the files (read in triton-inference-server/core at 73aad7c, 2026-06, and
server/docs/user_guide/implicit_state_management.md):

- *A zero-length initial state cannot be expressed.* ``initial_state`` accepts a 0 in ``dims``
  (``SequenceBatchScheduler::GenerateInitialStateData`` rejects only -1), but ``SequenceStates::Initialize``
  shapes the first request's state from the state's config ``dims`` with every variable dim set to 1; the
  initial state's own dims are recorded (core PR #270) but not used. An initial state of dims ``[1, H, 0, D]``
  would be a 0-byte buffer under a ``[1, H, 1, D]`` shape. So the wrapped graph ignores the incoming cache when
  the ``START`` control is 1 and starts from an empty ``(batch, H, 0, D)`` cache it makes itself (an ``If`` on
  ``START``), and the config gives ``initial_state`` zero data of exactly the shape Triton uses, ``[1, H, 1, D]``,
  so the first request's ignored input is defined, not uninitialised memory.
- *State pairs are matched by sorted position* (``SequenceStates::OutputState`` pairs the i-th output state with
  the i-th input state of two name-sorted maps; server issue #8586 shows the swap when a name is a prefix of
  another). The state tensors are renamed with a zero-padded index, the layer's or, for a cache given tensor by
  tensor, the tensor's place (``past_key_values.01.key``,
  ``present.01.key``): no name is a prefix of another, and the sorted inputs pair with the sorted outputs.
  ``state_names_safe`` checks both.
- *States of different lengths cannot share a batch* (a batch is one dense tensor per input; caches grow until
  ``max_context``), so ``max_batch_size`` is 0 and the Direct strategy gives each sequence its own execution;
  scale with ``instance_group`` count and more servers. A batch dimension is still there: a C-channel series is
  one sequence of C rows. (A fixed-capacity cache would batch, at 1.4 to 1.9x the cost per step measured in
  ``bench/cache_graphs.py``.)

Controls: ``START``, ``END``, ``READY`` (FP32 0/1, shape [1]) and ``CORRID`` (UINT64, [1]) are inputs of the
wrapped graph, as the ONNX Runtime backend requires of configured controls; only ``START`` is read.

**Exports without a cache** (e.g. CALF's forecaster) get a plain config: dynamic batching over their batch dim
when every input and output starts with the same symbolic dim, otherwise ``max_batch_size: 0``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from tsattn.export.manifest import CacheSpec, GraphSpec, Manifest, TensorSpec, load_manifest
from tsattn.export.task import Task

TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "int64": "TYPE_INT64",
                 "int32": "TYPE_INT32", "bool": "TYPE_BOOL"}
CONTROLS = (("START", "CONTROL_SEQUENCE_START"), ("END", "CONTROL_SEQUENCE_END"),
            ("READY", "CONTROL_SEQUENCE_READY"))
CORRID = "CORRID"
BACKENDS = ("onnxruntime", "python")  # python: tsattn.export.triton_python (CPU servers without ONNX Runtime)
INNER = "tsattn_inner/"  # prefix of the original cache tensor names inside the wrapped graph


class TritonRepoError(ValueError):
    """The export cannot be laid out for Triton (names, dims), or the repository entry exists."""


# ---------------------------------------------------------------------------------------------------- names


def state_names(cache: CacheSpec) -> List[Tuple[str, str]]:
    """(input state, output state) per cache tensor, graph order (``cache.cache_tensors()``). A uniform cache keeps
    its names with the layer index zero-padded to a fixed width (at least 2): ``past_key_values.00.key`` ->
    ``present.00.key``; a cache given tensor by tensor (``cache.tensors``, e.g. Wave-Transformer's) is named by the
    tensor's place, zero-padded, and its part: ``past_key_values.07.wave`` -> ``present.07.wave``. Either way two
    names differ inside a fixed-width index, so none is a prefix of another and sorted inputs pair with sorted
    outputs (``state_names_safe`` checks both)."""
    tensors = cache.cache_tensors()
    if not cache.tensors:
        width = max(2, len(str(cache.layers - 1)))
        return [((cache.past_key if t.part == "key" else cache.past_value).format(i=f"{t.layer:0{width}d}"),
                 (cache.present_key if t.part == "key" else cache.present_value).format(i=f"{t.layer:0{width}d}"))
                for t in tensors]
    width = max(2, len(str(len(tensors) - 1)))
    return [(f"past_key_values.{k:0{width}d}.{t.part}", f"present.{k:0{width}d}.{t.part}")
            for k, t in enumerate(tensors)]


def unsupported(task: Task, cache: Optional[CacheSpec], inputs: Sequence[TensorSpec]) -> Optional[str]:
    """Why Triton's sequence batcher cannot drive an export (None: it can), from its task, cache and step graph
    inputs: every graph input must be a request input the client sends each time, or a cache tensor (implicit
    state). ``tsattn-export --triton-repo`` asks before exporting anything."""
    if cache is None:
        return None
    past = set(cache.past_names()) | {task.position}
    for t in inputs:
        if t.name not in past and not t.shape:
            return f"graph input {t.name!r} is a scalar; Triton inputs need at least one dim"
    return None


def state_names_safe(pairs: Sequence[Tuple[str, str]]) -> Optional[str]:
    """None if Triton pairs these states correctly; else why not: a name that is a prefix of another (or a
    repeat), or sorted input names that do not line up with sorted output names (Triton pairs them by position)."""
    for names in ([p for p, _ in pairs], [q for _, q in pairs], [p for p, _ in pairs] + [q for _, q in pairs]):
        ordered = sorted(names)
        for a, b in zip(ordered, ordered[1:]):
            if b.startswith(a):
                return f"state name {a!r} is a prefix of {b!r}" if a != b else f"state name {a!r} repeats"
    by_input = [q for _, q in sorted(pairs)]
    if by_input != sorted(q for _, q in pairs):
        return "sorted input state names do not line up with sorted output state names"
    return None


# ---------------------------------------------------------------------------------------------------- graph


def _rename(graph, mapping: Dict[str, str]) -> None:
    """Rename values in ``graph`` and its subgraphs (node inputs/outputs, graph inputs/outputs, value_info)."""
    import onnx

    for node in graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _rename(attr.g, mapping)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _rename(g, mapping)
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        vi.name = mapping.get(vi.name, vi.name)


def cross_state_names(feeds: Sequence[Tuple[str, str]]) -> List[Tuple[str, str]]:
    """(input state, output state) per encoder output an encoder-decoder feeds its steps, numbered by the feed's
    place, zero-padded, with the step input's last name part: ``cross_key_values.00.key`` -> ``cross_present.00.key``,
    ``cross_key_values.01.value`` -> ...; both sort before the cache's ``past_key_values.*`` / ``present.*``, so the
    sorted lists still pair up."""
    width = max(2, len(str(len(feeds) - 1)))
    return [(f"cross_key_values.{k:0{width}d}.{dst.rsplit('.', 1)[-1]}",
             f"cross_present.{k:0{width}d}.{dst.rsplit('.', 1)[-1]}") for k, (_, dst) in enumerate(feeds)]


POSITION_STATE = ("past_position", "present_position")
"""The state a graph with a start position input (``task.position``) gets: the sequence's step count, INT64 [1];
sorted, it comes after the cache's input and output states alike (``past_p`` > ``past_k``, ``present_`` >
``present.``)."""


def sequence_model(model, cache: CacheSpec, batch_input: str, encoder=None, feeds: Sequence[Tuple[str, str]] = (),
                   position: Optional[Tuple[str, int]] = None):
    """The export's graph wrapped for Triton's sequence batcher (see the module docstring): state inputs/outputs
    renamed (``state_names``), the incoming cache replaced by an empty one when ``START`` is 1, the controls
    added as inputs. ``batch_input``: a graph input whose dim 0 is the batch (it sizes the empty cache).

    ``encoder`` (an encoder-decoder's encoder graph, a ``ModelProto``) and ``feeds`` (encoder output, step input):
    the step inputs the encoder feeds become states too (``cross_state_names``); when ``START`` is 1 the encoder
    runs inside the wrapped graph on its own inputs (request inputs of every request, read at the start only).
    ``position`` (the graph's start-position input, the time axis of ``batch_input``): the position is a state
    (``POSITION_STATE``), 0 at the start, advanced by each request's steps, and fed to that input."""
    import onnx
    from onnx import TensorProto, compose, helper

    graph = model.graph
    pairs = state_names(cache)
    past, present = cache.past_names(), cache.present_names()
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(cache.dtype))
    cross = [dst for _, dst in feeds]
    cross_pairs = cross_state_names(feeds)
    _rename(graph, {n: INNER + n for n in past + present + cross + ([position[0]] if position else [])})
    kept_inputs = [vi for vi in graph.input if not vi.name.startswith(INNER)]
    kept_outputs = [vi for vi in graph.output if not vi.name.startswith(INNER)]
    cross_types = {vi.name[len(INNER):]: vi.type for vi in graph.input if vi.name[len(INNER):] in cross}
    del graph.input[:]
    del graph.output[:]
    tensors = cache.cache_tensors()
    graph.input.extend(kept_inputs)
    graph.input.extend(helper.make_tensor_value_info(p, elem, [cache.batch_dim, t.heads, cache.past_dim, t.dim])
                       for (p, _), t in zip(pairs, tensors))
    enc_nodes: List = []
    if encoder is not None:  # the encoder's graph, its names prefixed, its inputs the wrapped graph's own
        enc = compose.add_prefix(encoder, "tsattn_enc/")
        weights = {i.name for i in enc.graph.initializer}
        plain = {vi.name: vi.name[len("tsattn_enc/"):] for vi in enc.graph.input if vi.name not in weights}
        _rename(enc.graph, plain)
        graph.input.extend(vi for vi in enc.graph.input if vi.name in plain.values())
        graph.initializer.extend(enc.graph.initializer)
        enc_nodes = list(enc.graph.node)
        for (p, _), c in zip(cross_pairs, cross):
            graph.input.append(onnx.ValueInfoProto(name=p, type=cross_types[c]))
    if position is not None:
        graph.input.append(helper.make_tensor_value_info(POSITION_STATE[0], TensorProto.INT64, [1]))
    graph.input.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1]) for name, _ in CONTROLS)
    graph.input.append(helper.make_tensor_value_info(CORRID, TensorProto.UINT64, [1]))
    graph.output.extend(kept_outputs)
    graph.output.extend(helper.make_tensor_value_info(q, elem, [cache.batch_dim, t.heads, cache.present_dim, t.dim])
                        for (_, q), t in zip(pairs, tensors))
    graph.output.extend(onnx.ValueInfoProto(name=q, type=cross_types[c]) for (_, q), c in zip(cross_pairs, cross))
    if position is not None:
        graph.output.append(helper.make_tensor_value_info(POSITION_STATE[1], TensorProto.INT64, [1]))

    # then: empty caches (batch, heads, 0, dim) of every tensor's own shape, the batch read from the data input
    then_nodes = [
        helper.make_node("Shape", [batch_input], ["tsattn_start/shape"]),
        helper.make_node("Gather", ["tsattn_start/shape", "tsattn_start/first"], ["tsattn_start/batch"], axis=0),
    ]
    tails = {}
    for k, t in enumerate(tensors):
        key = (t.heads, t.dim)
        if key not in tails:  # one empty tensor per distinct (heads, dim)
            j = len(tails)
            tails[key] = helper.make_tensor(f"tsattn_start/tail{j}", TensorProto.INT64, [3], [t.heads, 0, t.dim])
            then_nodes += [
                helper.make_node("Concat", ["tsattn_start/batch", f"tsattn_start/tail{j}"], [f"tsattn_start/dims{j}"],
                                 axis=0),
                helper.make_node("ConstantOfShape", [f"tsattn_start/dims{j}"], [f"tsattn_start/empty{j}"],
                                 value=helper.make_tensor("zero", elem, [1], [0])),
            ]
        j = list(tails).index(key)
        then_nodes.append(helper.make_node("Identity", [f"tsattn_start/empty{j}"], [f"tsattn_start/{k}"]))
    # an encoder-decoder's encoder runs at the start; its outputs then come back as the cross states
    then_nodes += enc_nodes + [helper.make_node("Identity", ["tsattn_enc/" + src], [f"tsattn_start/c{k}"])
                               for k, (src, _) in enumerate(feeds)]
    first = helper.make_tensor("tsattn_start/first", TensorProto.INT64, [1], [0])
    then_branch = helper.make_graph(
        then_nodes, "start_of_sequence", [],
        [helper.make_tensor_value_info(f"tsattn_start/{k}", elem, None) for k in range(len(past))]
        + [helper.make_tensor_value_info(f"tsattn_start/c{k}", elem, None) for k in range(len(cross))],
        list(tails.values()) + [first])
    else_branch = helper.make_graph(
        [helper.make_node("Identity", [p], [f"tsattn_continue/{k}"]) for k, (p, _) in enumerate(pairs)]
        + [helper.make_node("Identity", [p], [f"tsattn_continue/c{k}"]) for k, (p, _) in enumerate(cross_pairs)],
        "continue_sequence", [],
        [helper.make_tensor_value_info(f"tsattn_continue/{k}", elem, None) for k in range(len(past))]
        + [helper.make_tensor_value_info(f"tsattn_continue/c{k}", elem, None) for k in range(len(cross))])
    half = helper.make_tensor("tsattn/half", TensorProto.FLOAT, [], [0.5])
    prologue = [
        helper.make_node("Greater", ["START", "tsattn/half"], ["tsattn/start_1"]),
        helper.make_node("Squeeze", ["tsattn/start_1"], ["tsattn/start"]),  # [1] -> scalar condition
        helper.make_node("If", ["tsattn/start"], [INNER + p for p in past + cross], then_branch=then_branch,
                         else_branch=else_branch, name="tsattn/start_or_continue"),
    ]
    epilogue = [helper.make_node("Identity", [INNER + q0], [q]) for q0, (_, q) in zip(present, pairs)]
    epilogue += [helper.make_node("Identity", [INNER + c], [q]) for c, (_, q) in zip(cross, cross_pairs)]
    if position is not None:  # 0 at the start, else the state; the graph's scalar; the next = + this request's steps
        name, axis = position
        prologue += [
            helper.make_node("Cast", ["tsattn/start_1"], ["tsattn/start_i"], to=TensorProto.INT64),
            helper.make_node("Sub", ["tsattn/one", "tsattn/start_i"], ["tsattn/keep"]),
            helper.make_node("Mul", [POSITION_STATE[0], "tsattn/keep"], ["tsattn/position"]),
            helper.make_node("Squeeze", ["tsattn/position"], [INNER + name]),
        ]
        epilogue += [
            helper.make_node("Shape", [batch_input], ["tsattn/step_shape"]),
            helper.make_node("Gather", ["tsattn/step_shape", "tsattn/time_axis"], ["tsattn/steps"], axis=0),
            helper.make_node("Add", ["tsattn/position", "tsattn/steps"], [POSITION_STATE[1]]),
        ]
        graph.initializer.extend([helper.make_tensor("tsattn/one", TensorProto.INT64, [1], [1]),
                                  helper.make_tensor("tsattn/time_axis", TensorProto.INT64, [1], [axis])])
    nodes = prologue + list(graph.node) + epilogue
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.append(half)
    onnx.checker.check_model(model)
    return model


# ---------------------------------------------------------------------------------------------------- config


def _dims(shape: Sequence) -> str:
    return "[ " + ", ".join(str(d if isinstance(d, int) else -1) for d in shape) + " ]"


def _io_block(kind: str, tensors: Sequence[TensorSpec], skip_batch: bool) -> str:
    entries = []
    for t in tensors:
        if t.dtype not in TRITON_DTYPES:
            raise TritonRepoError(f"{kind} {t.name!r}: dtype {t.dtype} has no Triton type")
        shape = t.shape[1:] if skip_batch else t.shape
        entries.append(f'  {{\n    name: "{t.name}"\n    data_type: {TRITON_DTYPES[t.dtype]}\n    dims: {_dims(shape)}\n  }}')
    return f"{kind} [\n" + ",\n".join(entries) + "\n]\n"


def _state(past: str, present: str, dtype: str, dims: Sequence, initial: Sequence) -> str:
    """One ``state`` entry: the pair, its dims, and zero initial data of the shape Triton really hands a new
    sequence (``initial``: every variable dim 1; the wrapped graph ignores it, see the module docstring)."""
    return (f'    {{\n      input_name: "{past}"\n      output_name: "{present}"\n      data_type: {dtype}\n'
            f'      dims: {_dims(dims)}\n      initial_state: {{\n        name: "ignored_at_start"\n'
            f'        data_type: {dtype}\n        dims: {_dims(initial)}\n        zero_data: true\n      }}\n    }}')


def sequence_config(name: str, graph: GraphSpec, cache: CacheSpec, instances: int, idle_s: float, header: str,
                    encoder: Optional[GraphSpec] = None, feeds: Sequence[Tuple[str, str]] = (),
                    position: Optional[str] = None) -> str:
    """config.pbtxt text of a streaming export (see the module docstring); ``encoder``/``feeds``: an
    encoder-decoder's encoder graph, whose inputs are request inputs and whose fed outputs are states."""
    pairs = state_names(cache)
    cross = {dst for _, dst in feeds}
    past = set(cache.past_names()) | cross | {position}
    present = set(cache.present_names())
    inputs = [t for t in graph.inputs if t.name not in past] + (list(encoder.inputs) if encoder else [])
    outputs = [t for t in graph.outputs if t.name not in present]
    dtype = TRITON_DTYPES[cache.dtype]
    controls = [f'    {{\n      name: "{n}"\n      control [ {{ kind: {k} fp32_false_true: [ 0, 1 ] }} ]\n    }}'
                for n, k in CONTROLS]
    controls.append(f'    {{\n      name: "{CORRID}"\n      control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: '
                    f'TYPE_UINT64 }} ]\n    }}')
    states = [_state(p, q, dtype, [cache.batch_dim, t.heads, cache.past_dim, t.dim], [1, t.heads, 1, t.dim])
              for (p, q), t in zip(pairs, cache.cache_tensors())]
    for (p, q), (_, dst) in zip(cross_state_names(feeds), feeds):
        shape = graph.input(dst).shape  # (batch, heads, src_len, dim)
        states.append(_state(p, q, dtype, shape, [1] + [d if isinstance(d, int) else 1 for d in shape[1:]]))
    if position is not None:
        states.append(_state(*POSITION_STATE, "TYPE_INT64", [1], [1]))
    return (
        f"{header}"
        f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'
        + _io_block("input", inputs, skip_batch=False)
        + _io_block("output", outputs, skip_batch=False)
        + "sequence_batching {\n"
        f"  max_sequence_idle_microseconds: {int(idle_s * 1e6)}\n"
        "  direct { }\n"
        "  control_input [\n" + ",\n".join(controls) + "\n  ]\n"
        "  state [\n" + ",\n".join(states) + "\n  ]\n"
        "}\n"
        f"instance_group [ {{ count: {instances} }} ]\n"
    )


def plain_config(name: str, graph: GraphSpec, instances: int, max_batch_size: int, header: str) -> str:
    """config.pbtxt text of an export without a cache: dynamic batching over a shared symbolic first dim."""
    firsts = {t.shape[0] if t.shape else None for t in list(graph.inputs) + list(graph.outputs)}
    batched = len(firsts) == 1 and isinstance(next(iter(firsts)), str)
    text = f'{header}name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: {max_batch_size if batched else 0}\n'
    text += _io_block("input", graph.inputs, skip_batch=batched) + _io_block("output", graph.outputs, batched)
    if batched:
        text += "dynamic_batching { }\n"
    return text + f"instance_group [ {{ count: {instances} }} ]\n"


# ---------------------------------------------------------------------------------------------------- the writer


def write_triton_repo(export: Union[str, os.PathLike, Manifest], repo: Union[str, os.PathLike],
                      model_name: Optional[str] = None, instances: int = 1, max_sequence_idle_s: float = 60.0,
                      max_batch_size: int = 64, overwrite: bool = False, backend: str = "onnxruntime",
                      python_env: Optional[str] = None) -> Path:
    """Write ``repo/<model_name>/`` (config.pbtxt, 1/model.onnx) for an export (a directory or its manifest);
    returns that directory. ``backend``: "onnxruntime" (the default, above) or "python" (model.py runs the graph
    with ONNX Runtime and keeps the caches; ``python_env`` its EXECUTION_ENV_PATH: ``tsattn.export.triton_python``).
    Raises ``ManifestError`` (the export does not verify), ``TritonRepoError`` (the
    entry exists without ``overwrite``, unsafe state names, no ONNX graph). Written beside and renamed into place.
    """
    import onnx

    from tsattn import __version__

    if backend not in BACKENDS:
        raise TritonRepoError(f"backend must be one of {BACKENDS}; got {backend!r}")
    manifest = export if isinstance(export, Manifest) else load_manifest(export)
    name = model_name or manifest.name
    if not name or "/" in name or name.startswith("."):
        raise TritonRepoError(f"model name {name!r} is not a directory name")
    repo = Path(repo)
    target = repo / name
    if target.exists() and not overwrite:
        raise TritonRepoError(f"{target}: exists (pass --overwrite to replace it)")
    cache = manifest.cache
    graph_name = cache.graph if cache is not None else next(iter(manifest.graphs))
    graph = manifest.graphs[graph_name]
    if "onnx" not in graph.files:
        raise TritonRepoError(f"export {manifest.name!r} has no ONNX file for graph {graph_name!r}")
    header = (f"# Triton model configuration written by tsattn-export --triton-repo (tsattn {__version__}) for the "
              f"export {manifest.name!r}\n# (source: {manifest.source.get('kind')}, exporter {manifest.exporter}, "
              f"opset {manifest.opset}). See tsattn/export/triton.py for the design.\n")
    model = onnx.load(str(manifest.graph_file(graph_name, "onnx"))) if backend == "onnxruntime" else None
    if model is None:
        config = None  # the Python-backend entry writes its own files (tsattn.export.triton_python)
    elif cache is not None:
        problem = unsupported(manifest.task, cache, graph.inputs)
        if problem:
            raise TritonRepoError(f"export {manifest.name!r} cannot be laid out for Triton: {problem}")
        feeds = manifest.task.encoder.feeds if manifest.task.encoder else ()
        problem = state_names_safe(state_names(cache) + cross_state_names(feeds)
                                   + ([POSITION_STATE] if manifest.task.position else []))
        if problem:
            raise TritonRepoError(f"cannot name the cache states safely for Triton: {problem}")
        fed = {dst for _, dst in feeds}
        batch_inputs = [t.name for t in graph.inputs if t.name not in cache.past_names() and t.name not in fed
                        and t.shape and t.shape[0] == cache.batch_dim]
        if not batch_inputs:
            raise TritonRepoError(f"graph {graph_name!r} has no input whose first dim is {cache.batch_dim!r}")
        encoder = encoder_spec = None
        if manifest.task.encoder is not None:  # the encoder runs inside the wrapped graph at a sequence's start
            encoder_spec = manifest.graphs[manifest.task.encoder.graph]
            encoder = onnx.load(str(manifest.graph_file(encoder_spec.name, "onnx")))
        task = manifest.task
        position = None
        if task.position is not None:  # the step count, a state the wrapped graph keeps and feeds
            first = next(t for t in task.inputs if t.name == batch_inputs[0]) if batch_inputs[0] in \
                task.input_names else task.inputs[0]
            position = (task.position, first.time_axis)
        model = sequence_model(model, cache, batch_inputs[0], encoder, feeds, position)
        config = sequence_config(name, graph, cache, instances, max_sequence_idle_s, header, encoder_spec, feeds,
                                 task.position)
    else:
        config = plain_config(name, graph, instances, max_batch_size, header)
    repo.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=repo))
    try:
        if model is None:
            from tsattn.export.triton_python import write_entry

            write_entry(tmp, manifest, graph_name, name, instances, max_sequence_idle_s, header, python_env)
        else:
            (tmp / "1").mkdir()
            onnx.save(model, str(tmp / "1" / "model.onnx"))
            (tmp / "config.pbtxt").write_text(config)
        os.chmod(tmp, 0o755)
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


__all__ = ["BACKENDS", "CONTROLS", "CORRID", "TritonRepoError", "plain_config", "sequence_config", "sequence_model",
           "state_names", "state_names_safe", "unsupported", "write_triton_repo"]
