"""The export manifest (``manifest.json``): what an export directory holds, and the spec objects it describes.

Standard library only (numpy on demand), so that the runtime can read an export with onnxruntime and numpy and
without torch. The exporter writes the manifest through ``Manifest.write``; the runtime calls
``load_manifest(export_dir)``, which checks the schema and every file's size and sha256 and returns the spec
objects: ``GraphSpec`` (each graph's inputs and outputs), ``CacheSpec`` (the KV-cache tensors), ``FileEntry``.

Schema (``manifest_version`` 2; version 1 manifests still load, their free-form task dict upgraded)::

    {
      "format": "tsattn-export", "manifest_version": 2,
      "name": "reference",                              model name
      "created": "2025-01-01T00:00:00Z",
      "source": {"kind": "reference", "config": {...}, "seed": 0, "checkpoint": null | {"path", "sha256"},
                 "weights": "checkpoint" | "random (seed 0): ..."}
             or {"kind": "model", "model": "autoregressive" | "encoder_decoder", "config": {...}, ...}
             or {"kind": "target", "target": "calf", "repo": ..., "upstream_commit": ..., "head": ...,
                 "dirty": [...], "feature": ..., "options": {...}, "options_from": ..., "checkpoint": ...,
                 "weights": "checkpoint" | "random (seed N): ...", "seed": ..., ...},   (a target spec adds its
                 own entries, e.g. CALF: model, exported, config, gpt2, lora, wcmha, word_embedding, stack)
      "task": {"version": 1, "kind": "streaming_forecast" | "sequence" | "causal_lm" | "seq2seq" | "forecast",
               "graph": "model", "time_dim": "seq", "answer": "last" | "steps", "horizon": 24,
               "inputs": [{"name": "values", "time_axis": 1}], "outputs": [{"name": "forecast", "time_axis": 1}],
               "encoder": null | {"graph", "inputs", "feeds"}, "position": null | "start_pos", "client": {...}}
                                                        the stream contract (``tsattn.export.task.Task``): what a
                                                        runtime needs to drive the graphs; no consumer guesses
      "exporter": "dynamo" | "legacy", "opset": 18,
      "files": [{"path": "model.onnx", "format": "onnx", "graph": "model", "bytes": 123, "sha256": "..."}, ...],
      "graphs": {"model": {"files": {"onnx": "model.onnx", "torchscript": "model.pt"},
                           "inputs": [{"name": "values", "dtype": "float32", "shape": ["batch", "seq"]}, ...],
                           "outputs": [...]}},
      "cache": null | {"graph": "model", "layers": 4, "kv_heads": 4, "head_dim": 32, "max_context": 512,
                       "dtype": "float32", "layout": ["batch", "kv_heads", "length", "head_dim"],
                       "past_key": "past_key_values.{i}.key", "past_value": "past_key_values.{i}.value",
                       "present_key": "present.{i}.key", "present_value": "present.{i}.value",
                       "batch_dim": "batch", "past_dim": "past", "present_dim": "present",
                       "sliding": true,      (false: absolute positions, a stream holds <= max_context)
                       "tensors": [...]}     (only when the cache tensors differ in shape or are not all
                                              keys and values, e.g. Wave-Transformer's: one entry per tensor in
                                              graph order, {"layer", "part", "past", "present", "heads", "dim"};
                                              kv_heads and head_dim are then null)
      "parity": [{"graph", "backend", "sizes", "output", "max_abs_err", "tol", "ok"}, ...],
      "versions": {"tsattn", "torch", "onnx", "onnxruntime", "onnxscript", "python"}
    }

Shapes list an int for a fixed dim and a name for a symbolic one; the same name means the same size across the
tensors of one call.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from tsattn.export.task import Task, TaskError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "tsattn-export"
MANIFEST_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: a free-form task dict, upgraded on reading (``Task.upgrade``)
DTYPES = ("float32", "float16", "float64", "int64", "int32", "bool")

Dim = Union[int, str]


class ManifestError(ValueError):
    """An export directory or its manifest is missing, malformed, or does not match its files."""


def sha256_file(path: Union[str, os.PathLike], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its name, dtype (``DTYPES``) and shape (int: fixed, str: symbolic dim)."""

    name: str
    dtype: str
    shape: Tuple[Dim, ...]

    def __post_init__(self) -> None:
        if not self.name:
            raise ManifestError("a tensor needs a non-empty name")
        if self.dtype not in DTYPES:
            raise ManifestError(f"tensor {self.name!r}: dtype must be one of {DTYPES}; got {self.dtype!r}")
        shape = tuple(self.shape)
        for d in shape:
            if isinstance(d, bool) or not isinstance(d, (int, str)) or (isinstance(d, int) and d < 0) or d == "":
                raise ManifestError(f"tensor {self.name!r}: a dim must be an int >= 0 or a non-empty name; got {d!r}")
        object.__setattr__(self, "shape", shape)

    @property
    def symbolic_dims(self) -> Tuple[str, ...]:
        return tuple(d for d in self.shape if isinstance(d, str))

    def resolve(self, sizes: Mapping[str, int]) -> Tuple[int, ...]:
        """The concrete shape for ``sizes`` (symbolic name -> size); a missing name raises ``KeyError``."""
        return tuple(d if isinstance(d, int) else int(sizes[d]) for d in self.shape)

    @property
    def numpy_dtype(self):
        import numpy as np

        return np.dtype(self.dtype)

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TensorSpec":
        return cls(str(d["name"]), str(d["dtype"]), tuple(d["shape"]))


@dataclass(frozen=True)
class CacheTensor:
    """One tensor of a cache given tensor by tensor (``CacheSpec.tensors``): ``layer`` (the cache slot, e.g. one
    attention call), ``part`` (``key``, ``value``, or a state of its own such as ``wave``), the graph's input and
    output names, and its layout (batch, ``heads``, length, ``dim``)."""

    layer: int
    part: str
    past: str
    present: str
    heads: int
    dim: int

    def __post_init__(self) -> None:
        for name in ("layer", "heads", "dim"):
            value = getattr(self, name)
            least = 0 if name == "layer" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ManifestError(f"cache tensor {self.past!r}: {name} must be an integer >= {least}; got {value!r}")
        for name in ("part", "past", "present"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ManifestError(f"cache tensor: {name} must be a non-empty name; got {getattr(self, name)!r}")

    def to_dict(self) -> Dict[str, Any]:
        return {k: getattr(self, k) for k in ("layer", "part", "past", "present", "heads", "dim")}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CacheTensor":
        return cls(int(d["layer"]), str(d["part"]), str(d["past"]), str(d["present"]), int(d["heads"]),
                   int(d["dim"]))


@dataclass(frozen=True)
class CacheSpec:
    """The KV cache of a causal graph: per layer a key and a value, each (batch, kv_heads, length, head_dim).

    Inputs ``past_key.format(i=i)`` / ``past_value...`` hold the ``past_dim`` positions before the call (0 for a
    prefill); outputs ``present_key...`` / ``present_value...`` hold the cache after it, ``present_dim``
    positions = min(past + new, max_context) (past + new when max_context is None). Feed each present back as
    the next call's past (``pairs()``). Flat order in a graph: layer 0 key, layer 0 value, layer 1 key, ...

    ``sliding``: True (the default) when the graph keeps the last ``max_context`` positions and a stream goes on
    for ever; False when positions are absolute (a position table, e.g. Hephaestus'): present = past + new, and a
    stream holds at most ``max_context`` positions in all, after which it must be restarted (``fits``).
    ``kv_heads`` is whatever the graph's second cache dim holds (Hephaestus: one per head and column).

    ``tensors``: a cache whose tensors differ in shape, or are not all keys and values (Wave-Transformer: its
    blocks', its decoder's and its pyramid's attentions, PCCA's wave state), lists every tensor (``CacheTensor``)
    in graph order; ``kv_heads`` and ``head_dim`` are then None and ``layers`` counts the slots. Every tensor is
    still (batch, heads, length, dim) with one length for all, so ``shapes(batch, length)``,
    ``bytes_per_position()`` and the present -> past pairs work alike; ``shape()`` is for uniform caches only.
    """

    layers: int
    kv_heads: Optional[int]
    head_dim: Optional[int]
    max_context: Optional[int]
    dtype: str = "float32"
    graph: str = "model"
    past_key: str = "past_key_values.{i}.key"
    past_value: str = "past_key_values.{i}.value"
    present_key: str = "present.{i}.key"
    present_value: str = "present.{i}.value"
    batch_dim: str = "batch"
    past_dim: str = "past"
    present_dim: str = "present"
    sliding: bool = True
    tensors: Tuple[CacheTensor, ...] = ()

    layout = ("batch", "kv_heads", "length", "head_dim")

    def __post_init__(self) -> None:
        object.__setattr__(self, "tensors", tuple(self.tensors))
        sized = ("layers",) if self.tensors else ("layers", "kv_heads", "head_dim")
        for name in sized:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ManifestError(f"cache {name} must be a positive integer; got {value!r}")
        if self.max_context is not None and (not isinstance(self.max_context, int) or self.max_context < 1):
            raise ManifestError(f"cache max_context must be a positive integer or null; got {self.max_context!r}")
        if self.dtype not in DTYPES:
            raise ManifestError(f"cache dtype must be one of {DTYPES}; got {self.dtype!r}")
        if not isinstance(self.sliding, bool):
            raise ManifestError(f"cache sliding must be true or false; got {self.sliding!r}")
        if not self.sliding and self.max_context is None:
            raise ManifestError("a cache that does not slide (sliding false) needs max_context, the most positions "
                                "a stream may hold")
        for name in ("past_key", "past_value", "present_key", "present_value"):
            pattern = getattr(self, name)
            if "{i}" not in pattern:
                raise ManifestError(f"cache {name} must contain '{{i}}' (the layer index); got {pattern!r}")
        if self.tensors:
            if not all(isinstance(t, CacheTensor) for t in self.tensors):
                raise ManifestError("cache tensors must be CacheTensor entries")
            names = [t.past for t in self.tensors] + [t.present for t in self.tensors]
            if len(set(names)) != len(names):
                raise ManifestError("cache tensor names must be unique")
            slots = sorted({t.layer for t in self.tensors})
            if slots != list(range(self.layers)):
                raise ManifestError(f"cache tensors must cover layers 0..{self.layers - 1}; they cover {slots}")
            if self.kv_heads is not None or self.head_dim is not None:
                raise ManifestError("a cache given tensor by tensor has kv_heads and head_dim null (each tensor "
                                    "has its own heads and dim)")

    def cache_tensors(self) -> List[CacheTensor]:
        """Every cache tensor in graph order (for a uniform cache: key and value of each layer)."""
        if self.tensors:
            return list(self.tensors)
        return [CacheTensor(i, part, past.format(i=i), present.format(i=i), self.kv_heads, self.head_dim)
                for i in range(self.layers)
                for part, past, present in (("key", self.past_key, self.present_key),
                                            ("value", self.past_value, self.present_value))]

    @property
    def uniform(self) -> bool:
        """Whether every cache tensor has the same (heads, dim)."""
        return len({(t.heads, t.dim) for t in self.cache_tensors()}) == 1

    def past_names(self) -> List[str]:
        """Input names in graph order: past key 0, past value 0, past key 1, ..."""
        return [t.past for t in self.cache_tensors()]

    def present_names(self) -> List[str]:
        """Output names in graph order: present key 0, present value 0, present key 1, ..."""
        return [t.present for t in self.cache_tensors()]

    def pairs(self) -> List[Tuple[str, str]]:
        """(present output name, past input name): what to feed back on the next call."""
        return list(zip(self.present_names(), self.past_names()))

    def past_specs(self) -> List[TensorSpec]:
        return [TensorSpec(t.past, self.dtype, (self.batch_dim, t.heads, self.past_dim, t.dim))
                for t in self.cache_tensors()]

    def present_specs(self) -> List[TensorSpec]:
        return [TensorSpec(t.present, self.dtype, (self.batch_dim, t.heads, self.present_dim, t.dim))
                for t in self.cache_tensors()]

    def shape(self, batch: int, length: int) -> Tuple[int, int, int, int]:
        """The shape of one cache tensor holding ``length`` positions (``length=0``: a new stream); a cache whose
        tensors differ in shape raises ``ValueError`` (use ``shapes``)."""
        if not self.uniform:
            raise ValueError("the cache tensors differ in shape; use CacheSpec.shapes(batch, length)")
        t = self.cache_tensors()[0]
        return (batch, t.heads, length, t.dim)

    def shapes(self, batch: int, length: int) -> List[Tuple[int, int, int, int]]:
        """The shape of every cache tensor, graph order, holding ``length`` positions."""
        return [(batch, t.heads, length, t.dim) for t in self.cache_tensors()]

    def fits(self, past: int, new: int) -> bool:
        """Whether a call with ``past`` cached and ``new`` positions is within the graph's range: always when the
        cache slides, else past + new <= max_context."""
        return self.sliding or self.max_context is None or past + new <= self.max_context

    def bytes_per_position(self, itemsize: int = 4) -> int:
        """Bytes of cache (all layers, keys and values) one position of one stream takes."""
        return sum(t.heads * t.dim for t in self.cache_tensors()) * itemsize

    def to_dict(self) -> Dict[str, Any]:
        d = {k: getattr(self, k) for k in ("graph", "layers", "kv_heads", "head_dim", "max_context", "dtype")}
        d["layout"] = list(self.layout)
        d.update({k: getattr(self, k) for k in ("past_key", "past_value", "present_key", "present_value",
                                                  "batch_dim", "past_dim", "present_dim", "sliding")})
        if self.tensors:
            d["tensors"] = [t.to_dict() for t in self.tensors]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CacheSpec":
        if list(d.get("layout", cls.layout)) != list(cls.layout):
            raise ManifestError(f"cache layout must be {list(cls.layout)}; got {d.get('layout')!r}")
        keys = ("graph", "layers", "kv_heads", "head_dim", "max_context", "dtype", "past_key", "past_value",
                "present_key", "present_value", "batch_dim", "past_dim", "present_dim", "sliding")
        tensors = tuple(CacheTensor.from_dict(t) for t in d.get("tensors") or ())
        return cls(**{k: d[k] for k in keys if k in d}, tensors=tensors)


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph: its inputs and outputs in graph order and its file per format (paths relative)."""

    name: str
    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...]
    files: Mapping[str, str] = field(default_factory=dict)

    def input(self, name: str) -> TensorSpec:
        for t in self.inputs:
            if t.name == name:
                return t
        raise KeyError(f"graph {self.name!r} has no input {name!r}")

    def output(self, name: str) -> TensorSpec:
        for t in self.outputs:
            if t.name == name:
                return t
        raise KeyError(f"graph {self.name!r} has no output {name!r}")

    def to_dict(self) -> Dict[str, Any]:
        return {"files": dict(self.files), "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs]}

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any]) -> "GraphSpec":
        return cls(name, tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
                   tuple(TensorSpec.from_dict(t) for t in d["outputs"]), dict(d.get("files", {})))


@dataclass(frozen=True)
class FileEntry:
    """A file of the export: path relative to the export directory, size in bytes, sha256."""

    path: str
    bytes: int
    sha256: str
    format: str = ""
    graph: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return {"path": self.path, "format": self.format, "graph": self.graph, "bytes": self.bytes,
                "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FileEntry":
        return cls(str(d["path"]), int(d["bytes"]), str(d["sha256"]), str(d.get("format", "")), d.get("graph"))

    @classmethod
    def of(cls, root: Path, path: str, format: str = "", graph: Optional[str] = None) -> "FileEntry":
        full = Path(root) / path
        return cls(path, full.stat().st_size, sha256_file(full), format, graph)


@dataclass
class Manifest:
    """The parsed ``manifest.json``; ``root`` is the export directory it was read from (or will be written to)."""

    name: str
    source: Dict[str, Any]
    task: Task
    exporter: str
    opset: Optional[int]
    files: List[FileEntry]
    graphs: Dict[str, GraphSpec]
    cache: Optional[CacheSpec]
    parity: List[Dict[str, Any]]
    versions: Dict[str, Optional[str]]
    created: str = ""
    root: Optional[Path] = None

    def path(self, relative: str) -> Path:
        """Absolute path of a file of this export."""
        if self.root is None:
            raise ManifestError("this manifest has no export directory (root)")
        return Path(self.root) / relative

    def graph_file(self, graph: str, format: str = "onnx") -> Path:
        """Path of ``graph``'s file in ``format`` (``onnx`` or ``torchscript``); raises ``ManifestError`` if absent."""
        if graph not in self.graphs:
            raise ManifestError(f"export {self.name!r} has no graph {graph!r}; it has {sorted(self.graphs)}")
        files = self.graphs[graph].files
        if format not in files:
            raise ManifestError(f"graph {graph!r} of export {self.name!r} has no {format} file; it has {sorted(files)}")
        return self.path(files[format])

    @property
    def parity_ok(self) -> bool:
        return all(row.get("ok") for row in self.parity)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "manifest_version": MANIFEST_VERSION,
            "name": self.name,
            "created": self.created,
            "source": self.source,
            "task": self.task.to_dict(),
            "exporter": self.exporter,
            "opset": self.opset,
            "files": [f.to_dict() for f in self.files],
            "graphs": {n: g.to_dict() for n, g in self.graphs.items()},
            "cache": None if self.cache is None else self.cache.to_dict(),
            "parity": self.parity,
            "versions": self.versions,
        }

    def write(self, root: Union[str, os.PathLike]) -> Path:
        path = Path(root) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], root: Optional[Path] = None) -> "Manifest":
        if d.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"not a tsattn export manifest (format is {d.get('format')!r}, "
                                f"expected {MANIFEST_FORMAT!r})")
        version = d.get("manifest_version")
        if version not in READABLE_VERSIONS:
            raise ManifestError(f"unsupported manifest_version {version!r} (this tsattn reads "
                                f"{', '.join(map(str, READABLE_VERSIONS))})")
        try:
            graphs = {n: GraphSpec.from_dict(n, g) for n, g in d["graphs"].items()}
            cache = None if d.get("cache") is None else CacheSpec.from_dict(d["cache"])
            if version == 1:
                task = upgrade_task(d.get("task") or {}, graphs, cache)
            else:
                task = Task.from_dict(d["task"])
            manifest = cls(
                name=str(d["name"]), source=dict(d["source"]), task=task,
                exporter=str(d.get("exporter", "")), opset=d.get("opset"),
                files=[FileEntry.from_dict(f) for f in d["files"]], graphs=graphs, cache=cache,
                parity=list(d.get("parity") or []), versions=dict(d.get("versions") or {}),
                created=str(d.get("created", "")), root=root,
            )
        except ManifestError:
            raise
        except TaskError as exc:
            raise ManifestError(f"manifest task: {exc}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ManifestError(f"malformed manifest: {type(exc).__name__}: {exc}") from None
        manifest.check_consistency()
        return manifest

    def check_consistency(self) -> None:
        """Cross-references: graph files are listed in ``files``, the cache's tensors are in its graph."""
        listed = {f.path for f in self.files}
        for f in self.files:
            if Path(f.path).is_absolute() or ".." in Path(f.path).parts:
                raise ManifestError(f"file path {f.path!r} must be relative and inside the export directory")
        for g in self.graphs.values():
            for fmt, p in g.files.items():
                if p not in listed:
                    raise ManifestError(f"graph {g.name!r}: its {fmt} file {p!r} is not listed in files")
        if self.cache is not None:
            if self.cache.graph not in self.graphs:
                raise ManifestError(f"cache graph {self.cache.graph!r} is not among the graphs {sorted(self.graphs)}")
            g = self.graphs[self.cache.graph]
            names_in, names_out = [t.name for t in g.inputs], [t.name for t in g.outputs]
            for n in self.cache.past_names():
                if n not in names_in:
                    raise ManifestError(f"cache input {n!r} is not an input of graph {g.name!r}")
            for n in self.cache.present_names():
                if n not in names_out:
                    raise ManifestError(f"cache output {n!r} is not an output of graph {g.name!r}")
        try:
            self.task.check(graph_shapes(self.graphs))
        except TaskError as exc:
            raise ManifestError(f"manifest task: {exc}") from None
        if self.task.streams and (self.cache is None or self.cache.graph != self.task.graph):
            raise ManifestError(f"a {self.task.kind} task streams its graph {self.task.graph!r}, which needs the "
                                f"cache (the manifest's cache is "
                                f"{'absent' if self.cache is None else 'on graph ' + repr(self.cache.graph)})")

    def verify_files(self) -> None:
        """Every listed file exists with its recorded size and sha256; raises ``ManifestError`` naming the file."""
        for f in self.files:
            p = self.path(f.path)
            if not p.is_file():
                raise ManifestError(f"{p}: listed in the manifest but missing")
            size = p.stat().st_size
            if size != f.bytes:
                raise ManifestError(f"{p}: size {size} bytes differs from the manifest's {f.bytes} "
                                    f"(truncated or replaced); refusing to load it")
            digest = sha256_file(p)
            if digest != f.sha256:
                raise ManifestError(f"{p}: sha256 {digest[:16]}... differs from the manifest's {f.sha256[:16]}... "
                                    f"(the file was modified); refusing to load it")


def graph_shapes(graphs: Mapping[str, GraphSpec]) -> Dict[str, Tuple[Dict[str, Tuple], Dict[str, Tuple]]]:
    """``{graph: ({input: shape}, {output: shape})}``, what ``Task.check`` reads."""
    return {n: ({t.name: t.shape for t in g.inputs}, {t.name: t.shape for t in g.outputs}) for n, g in graphs.items()}


def upgrade_task(task: Mapping[str, Any], graphs: Mapping[str, GraphSpec], cache: Optional[CacheSpec]) -> Task:
    """The ``Task`` of a version-1 task dict (``Task.upgrade``) for these graphs and cache."""
    graph = cache.graph if cache is not None else next(iter(graphs))
    g = graphs[graph]
    skip_in = set(cache.past_names()) if cache is not None else set()
    skip_out = set(cache.present_names()) if cache is not None else set()
    return Task.upgrade(task, graph, {t.name: t.shape for t in g.inputs if t.name not in skip_in},
                        {t.name: t.shape for t in g.outputs if t.name not in skip_out}, cached=cache is not None)


def load_manifest(export_dir: Union[str, os.PathLike], verify: bool = True) -> Manifest:
    """Read ``export_dir/manifest.json``, check its schema and (``verify``) every file's size and sha256.

    Raises ``ManifestError`` naming the directory or file for a missing directory or manifest, invalid JSON, an
    unsupported schema, or a file that is missing, truncated or modified.
    """
    root = Path(export_dir)
    if not root.is_dir():
        raise ManifestError(f"{root}: not an export directory (no such directory)")
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{root}: not an export directory (no {MANIFEST_NAME})")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: unreadable manifest: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: the manifest must be a JSON object")
    manifest = Manifest.from_dict(data, root=root)
    if verify:
        manifest.verify_files()
    return manifest


def parity_table(rows: Sequence[Mapping[str, Any]], per_output: bool = False) -> str:
    """The parity rows as a plain-text table.

    ``per_output``: one line per row (graph, backend, check, sizes, output, max abs error, tol, ok). Otherwise one
    line per (graph, backend, check, sizes) with the number of outputs compared and the worst output's error.
    """
    def sizes_of(r: Mapping[str, Any]) -> str:
        return ",".join(f"{k}={v}" for k, v in (r.get("sizes") or {}).items())

    def err_of(r: Mapping[str, Any]) -> str:
        err = r.get("max_abs_err")
        return str(r.get("error", "-")) if err is None else f"{err:.2e}"

    if per_output:
        header = ("graph", "backend", "check", "sizes", "output", "max_abs_err", "tol", "ok")
        body = [(str(r.get("graph", "")), str(r.get("backend", "")), str(r.get("check", "")), sizes_of(r),
                 str(r.get("output", "")), err_of(r), f"{r.get('tol', 0):.0e}", "ok" if r.get("ok") else "FAIL")
                for r in rows]
    else:
        groups: Dict[Tuple[str, str, str, str], List[Mapping[str, Any]]] = {}
        for r in rows:
            key = (str(r.get("graph", "")), str(r.get("backend", "")), str(r.get("check", "")), sizes_of(r))
            groups.setdefault(key, []).append(r)
        header = ("graph", "backend", "check", "sizes", "outputs", "worst output", "max_abs_err", "tol", "ok")
        body = []
        for key, group in groups.items():
            failed = [r for r in group if not r.get("ok")]
            worst = failed[0] if failed else max(group, key=lambda r: r.get("max_abs_err") or 0.0)
            body.append(key + (str(len(group)), str(worst.get("output", "")), err_of(worst),
                               f"{worst.get('tol', 0):.0e}", "FAIL" if failed else "ok"))
    widths = [max([len(h)] + [len(row[i]) for row in body]) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in body]
    return "\n".join(lines)
