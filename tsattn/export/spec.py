"""Declarative export specs (in the manner of HF optimum's ``OnnxConfig``), kept apart from the export loop.

An ``ExportSpec`` says what a graph takes and returns (``TensorSpec``: names, dtypes, shapes with symbolic dims),
its KV cache (``CacheSpec``), the sizes to trace at and the other sizes to check parity at, and how to make
example inputs. ``tsattn.export.exporter.export`` is the one loop that reads it. A builder returns an
``Exportable``: the module whose ``forward(*graph inputs) -> tuple(graph outputs)`` is exported (``FlatCache``
adapts a model with ``forward(*inputs, past) -> (outputs, present)``), the spec, and the manifest's ``source``.

Exporter traps the spec rules out (``ExportSpec.validate``): a symbolic dim traced at size 0 or 1 is specialised
by both exporters, and two dims traced at the same size (or at the size of a fixed dim) can be unified, so
example sizes are >= 2 and pairwise distinct (``distinct_sizes`` picks them); parity runs at sizes other than the
traced ones, 0 and 1 included where a dim allows them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from tsattn.export.manifest import CacheSpec, TensorSpec
from tsattn.export.task import StepTensor, Task

EXPORTERS = ("dynamo", "legacy")
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "float64": torch.float64,
                "int64": torch.int64, "int32": torch.int32, "bool": torch.bool}

Sizes = Mapping[str, int]


class SpecError(ValueError):
    """An export spec contradicts itself or invites an exporter trap."""


def distinct_sizes(names: Sequence[str], avoid: Iterable[int] = (), start: int = 3) -> Dict[str, int]:
    """Example sizes for symbolic dims: pairwise distinct, >= ``start`` (>= 2), none in ``avoid`` (fixed dims).

    Primes are used so that no size is a multiple of another (an exporter cannot mistake a product for a dim).
    """
    avoid = set(avoid)
    sizes: Dict[str, int] = {}
    n = max(2, start)
    for name in names:
        while n in avoid or n in sizes.values() or any(n % p == 0 for p in range(2, int(n ** 0.5) + 1)):
            n += 1
        sizes[name] = n
        n += 1
    return sizes


def step_tensors(tensors: Sequence[TensorSpec], time_dim: str = "seq") -> Tuple[StepTensor, ...]:
    """A task's ``StepTensor`` for each tensor: its time axis is where its shape holds ``time_dim`` (else None)."""
    return tuple(StepTensor(t.name, t.shape.index(time_dim) if time_dim in t.shape else None) for t in tensors)


@dataclass(frozen=True)
class StepwiseCheck:
    """Cached decoding must equal one full forward: feed ``lengths`` positions per call (the first a prefill on
    an empty cache), each present back as the next past, and compare the outputs that have ``sequence_dim``
    (concatenated along it) and the final caches with one full forward over ``sum(lengths)`` positions.
    ``position``: the input that holds the absolute position of a call's first step (each call's is the full
    forward's plus the positions fed before it)."""

    sequence_dim: str
    lengths: Tuple[int, ...]
    batch: int = 2
    position: Optional[str] = None  # an int64 scalar input holding the first new position (a sliding graph's)

    def __post_init__(self) -> None:
        if not self.lengths or any(n < 1 for n in self.lengths):
            raise SpecError(f"stepwise lengths must be positive; got {self.lengths}")


@dataclass(frozen=True)
class ExportSpec:
    """What one graph takes and returns, and how to check it. ``inputs``/``outputs`` exclude the cache tensors,
    which ``cache`` adds at the end of each (``graph_inputs``/``graph_outputs``).

    name: the model's name in the manifest. task: the stream contract (``tsattn.export.task.Task``: kind, step
    inputs and outputs with their time axes, what an append answers, client facts; ``step_task`` makes one from
    the spec's own tensors), written to the manifest; a free-form dict is upgraded as a version-1 manifest's. example_sizes: sizes to trace at (one per symbolic
    input dim). parity_sizes: two or more other size sets to compare backends with eager at. dim_min: smallest
    size per symbolic input dim (default 1; a cache's past dim allows 0). dim_max: largest size per symbolic input
    dim where the model has one (e.g. a position table; default unbounded), given to torch.export. make_inputs: ``(sizes, generator) ->
    tuple of tensors`` in graph-input order, when random normals (floats) or small integers do not fit.
    exporter: the ONNX exporter this model prefers (``--exporter`` overrides). unsupported_exporters: exporters
    that cannot export this model faithfully, each with the reason (``export`` raises ``SpecError`` saying it;
    e.g. torch.export and a target's data-dependent Python branches). atol: parity tolerance.
    torchscript_freeze: save the traced module frozen (``torch.jit.freeze(..., optimize_numerics=False)``): the
    weights the graph uses become constants and the module's unused ones are dropped (a target whose forward
    computes outputs that are not exported, e.g. CALF's text branch, would otherwise ship all of them).
    """

    name: str
    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...]
    example_sizes: Mapping[str, int]
    parity_sizes: Tuple[Mapping[str, int], ...]
    cache: Optional[CacheSpec] = None
    task: Union[Task, Mapping[str, Any]] = field(default_factory=dict)
    dim_min: Mapping[str, int] = field(default_factory=dict)
    dim_max: Mapping[str, int] = field(default_factory=dict)
    stepwise: Optional[StepwiseCheck] = None
    make_inputs: Optional[Callable[[Sizes, torch.Generator], Tuple[Tensor, ...]]] = None
    exporter: str = "dynamo"
    unsupported_exporters: Mapping[str, str] = field(default_factory=dict)
    graph: str = "model"
    atol: float = 1e-4
    torchscript_freeze: bool = False

    @property
    def graph_inputs(self) -> List[TensorSpec]:
        return list(self.inputs) + (self.cache.past_specs() if self.cache else [])

    @property
    def graph_outputs(self) -> List[TensorSpec]:
        return list(self.outputs) + (self.cache.present_specs() if self.cache else [])

    @property
    def input_dims(self) -> List[str]:
        """Symbolic dims of the inputs, in order of first appearance."""
        seen: List[str] = []
        for t in self.graph_inputs:
            seen += [d for d in t.symbolic_dims if d not in seen]
        return seen

    @property
    def fixed_dims(self) -> List[int]:
        return sorted({d for t in self.graph_inputs + self.graph_outputs for d in t.shape if isinstance(d, int)})

    def validate(self) -> None:
        """Raise ``SpecError`` for a self-contradiction or an exporter trap (see the module docstring)."""
        names = [t.name for t in self.graph_inputs + self.graph_outputs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SpecError(f"{self.name}: tensor names must be unique; repeated: {dup}")
        if self.exporter not in EXPORTERS:
            raise SpecError(f"{self.name}: exporter must be one of {EXPORTERS}; got {self.exporter!r}")
        if self.exporter in self.unsupported_exporters:
            raise SpecError(f"{self.name}: its preferred exporter {self.exporter!r} is also listed as unsupported")
        dims = self.input_dims
        missing = [d for d in dims if d not in self.example_sizes]
        if missing:
            raise SpecError(f"{self.name}: example_sizes lacks the symbolic dim(s) {missing}")
        for d in dims:
            if self.example_sizes[d] < 2:
                raise SpecError(f"{self.name}: example size of {d!r} is {self.example_sizes[d]}; exporters "
                                f"specialise a dim traced at 0 or 1, so trace at >= 2")
        values = [self.example_sizes[d] for d in dims]
        clash = sorted({v for v in values if values.count(v) > 1 or v in self.fixed_dims})
        if clash:
            raise SpecError(f"{self.name}: example sizes {clash} repeat across dims or equal a fixed dim; an "
                            f"exporter may unify them. Use distinct_sizes()")
        if len(self.parity_sizes) < 2:
            raise SpecError(f"{self.name}: parity needs at least 2 size sets other than the example's")
        for sizes in self.parity_sizes:
            lacking = [d for d in dims if d not in sizes]
            if lacking:
                raise SpecError(f"{self.name}: parity sizes {dict(sizes)} lack {lacking}")
            if all(sizes[d] == self.example_sizes[d] for d in dims):
                raise SpecError(f"{self.name}: parity sizes {dict(sizes)} equal the traced ones; they must differ")
            low = [d for d in dims if sizes[d] < self.dim_min.get(d, 1)]
            if low:
                raise SpecError(f"{self.name}: parity sizes {dict(sizes)} go below dim_min for {low}")
            high = [d for d in dims if d in self.dim_max and sizes[d] > self.dim_max[d]]
            if high:
                raise SpecError(f"{self.name}: parity sizes {dict(sizes)} go above dim_max for {high}")
        high = [d for d in dims if d in self.dim_max and self.example_sizes[d] > self.dim_max[d]]
        if high:
            raise SpecError(f"{self.name}: example sizes go above dim_max for {high}")
        if self.stepwise is not None:
            if self.cache is None:
                raise SpecError(f"{self.name}: a stepwise check needs a cache")
            if self.stepwise.sequence_dim not in dims:
                raise SpecError(f"{self.name}: stepwise sequence_dim {self.stepwise.sequence_dim!r} is not an "
                                f"input dim")

    def check_exporter(self, exporter: str) -> None:
        """Raise ``SpecError`` if ``exporter`` cannot export this model (``unsupported_exporters``)."""
        if exporter in self.unsupported_exporters:
            others = [e for e in EXPORTERS if e not in self.unsupported_exporters]
            raise SpecError(f"{self.name} cannot be exported with the {exporter} exporter: "
                            f"{self.unsupported_exporters[exporter]}; use --exporter {' or '.join(others)}")

    def example_inputs(self, sizes: Sizes, seed: int = 0) -> Tuple[Tensor, ...]:
        """Inputs in graph order at ``sizes`` (symbolic dim -> size), reproducible from ``seed``."""
        g = torch.Generator().manual_seed(seed)
        if self.make_inputs is not None:
            return tuple(self.make_inputs(sizes, g))
        out = []
        for t in self.graph_inputs:
            shape, dtype = t.resolve(sizes), TORCH_DTYPES[t.dtype]
            if dtype.is_floating_point:
                out.append(torch.randn(shape, generator=g).to(dtype))
            elif dtype == torch.bool:
                out.append(torch.rand(shape, generator=g) > 0.5)
            else:
                out.append(torch.randint(0, 8, shape, generator=g, dtype=dtype))
        return tuple(out)


@dataclass(frozen=True)
class Exportable:
    """What a builder hands the export loop: the module to export (``forward(*graph inputs)`` returns the graph
    outputs, a tensor or a tuple, in eval mode), its spec, and the manifest's ``source`` entry. ``extra``: more
    graphs of the same export, (module, spec) each with its own ``spec.graph`` (an encoder-decoder's encoder);
    the first spec's name, cache and task are the export's."""

    module: nn.Module
    spec: ExportSpec
    source: Dict[str, Any]
    extra: Tuple[Tuple[nn.Module, ExportSpec], ...] = ()


class FlatCache(nn.Module):
    """Adapts ``model(*inputs, past) -> (outputs, present)`` to the flat graph signature
    ``forward(*inputs, past_key_0, past_value_0, ...) -> (*outputs, present_key_0, present_value_0, ...)``.

    ``past`` / ``present``: tuples of ``layers`` (key, value) pairs, or with ``parts`` (tensors per layer, e.g.
    ``(2, 3, 1)``) tuples of that many tensors each (a cache given tensor by tensor, ``CacheSpec.tensors``).
    ``outputs``: a tensor or a tuple.
    """

    def __init__(self, model: nn.Module, n_inputs: int, layers: int, parts: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        self.model = model
        self.n_inputs = int(n_inputs)
        self.layers = int(layers)
        self.parts = tuple(int(n) for n in parts) if parts is not None else (2,) * self.layers
        if len(self.parts) != self.layers or any(n < 1 for n in self.parts):
            raise ValueError(f"FlatCache: parts must give a positive tensor count for each of the {self.layers} "
                             f"layers; got {parts!r}")

    def forward(self, *tensors: Tensor) -> Tuple[Tensor, ...]:
        inputs, flat = tensors[: self.n_inputs], tensors[self.n_inputs :]
        past, start = [], 0
        for n in self.parts:
            past.append(tuple(flat[start : start + n]))
            start += n
        outputs, present = self.model(*inputs, tuple(past))
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return tuple(outputs) + tuple(t for kv in present for t in kv)
