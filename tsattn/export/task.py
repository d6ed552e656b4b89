"""The stream contract of an export (the manifest's ``task``): what a runtime, a server or a Triton writer needs to
drive the graphs, typed and versioned. Standard library only (the runtime reads it without torch).

A ``Task`` names its ``kind`` (``KINDS``), the graph a step runs (``graph``), the step inputs and outputs by name,
each with the graph axis that is time (``StepTensor.time_axis``: an index into the graph's shape, batch at 0;
None for a tensor that is not per step), what an append answers (``answer``: ``"last"``, the primary output at the
last new step, as the reference forecaster has always answered; ``"steps"``: every step output for every new step),
the ``horizon``, and for an encoder-decoder the ``encoder`` (``EncoderTask``: the graph run once when a stream
opens, its inputs and which of its outputs feed which step-graph inputs for the stream's life). ``client`` holds
whatever a client must know to form inputs and read outputs (token tables, column names, normalisation, ...): the
runtime passes it on and never reads it.

Serialised (``to_dict``)::

    {"version": 1, "kind": "sequence", "graph": "model", "time_dim": "seq", "answer": "steps", "horizon": 1,
     "inputs":  [{"name": "numeric_inputs", "time_axis": 2}, ...],
     "outputs": [{"name": "numeric", "time_axis": 2}, ...],
     "encoder": null | {"graph": "encoder", "inputs": [{"name": "source", "time_axis": 1}],
                        "feeds": [["cross_key_values.0.key", "cross_key_values.0.key"], ...]},
     "position": null | "start_pos",
     "client": {...}}

Manifests of version 1 held a free-form dict (``{"kind": "streaming_forecast", "input": ..., "output": ...,
"sequence_dim": ..., ...}``); ``Task.upgrade(d, graph_shapes)`` turns one into a ``Task`` (its other keys go to
``client``), so that old exports keep loading.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

TASK_VERSION = 1
KINDS = {
    "streaming_forecast": "a causal forecaster: append observations, get the forecast after the last one "
                          "(the reference model)",
    "sequence": "a causal model over time steps with a KV cache: append the steps' inputs, get every new step's "
                "outputs (Hephaestus, seed 002's autoregressive model)",
    "causal_lm": "a causal language model: append token ids, get next-token logits per new token; generate() "
                 "samples and feeds its samples back (Wave-Transformer)",
    "seq2seq": "an encoder-decoder: a stream opens with its source sequence (the encoder runs once), then appends "
               "decoder steps (seed 002's EncoderDecoder)",
    "forecast": "stateless: one predict call per window, no stream (CALF)",
}
ANSWERS = ("last", "steps")
STREAMING_KINDS = ("streaming_forecast", "sequence", "causal_lm", "seq2seq")


class TaskError(ValueError):
    """A task contradicts itself or the graphs it describes."""


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise TaskError(f"task {what} must be a non-empty name; got {value!r}")
    return value


@dataclass(frozen=True)
class StepTensor:
    """A step input or output: the graph tensor ``name`` and ``time_axis``, the axis of the graph's shape that is
    time (batch is axis 0, so a stream's arrays, which have no batch axis, carry time on ``time_axis - 1``); None
    for a tensor with no time axis."""

    name: str
    time_axis: Optional[int]

    def __post_init__(self) -> None:
        _name(self.name, "tensor name")
        t = self.time_axis
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 1):
            raise TaskError(f"task tensor {self.name!r}: time_axis must be an integer >= 1 (axis 0 is the batch) or "
                            f"null; got {t!r}")

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "time_axis": self.time_axis}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StepTensor":
        return cls(d["name"], d.get("time_axis"))


@dataclass(frozen=True)
class EncoderTask:
    """An encoder-decoder's encoder: ``graph`` runs once when a stream opens, on ``inputs`` (the source sequence);
    ``feeds`` pairs (encoder output, step-graph input): those outputs are the stream's fixed step inputs."""

    graph: str
    inputs: Tuple[StepTensor, ...]
    feeds: Tuple[Tuple[str, str], ...]

    def __post_init__(self) -> None:
        _name(self.graph, "encoder graph")
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "feeds", tuple((str(a), str(b)) for a, b in self.feeds))
        if not self.inputs:
            raise TaskError("task encoder needs at least one input")
        if not self.feeds:
            raise TaskError("task encoder needs feeds (encoder output -> step input)")

    def to_dict(self) -> Dict[str, Any]:
        return {"graph": self.graph, "inputs": [t.to_dict() for t in self.inputs],
                "feeds": [list(p) for p in self.feeds]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EncoderTask":
        return cls(d["graph"], tuple(StepTensor.from_dict(t) for t in d["inputs"]),
                   tuple(tuple(p) for p in d["feeds"]))


@dataclass(frozen=True)
class Task:
    """The stream contract (see the module docstring). ``inputs[0]`` / ``outputs[0]`` are the primary input and
    output (the ``values`` form of an append feeds the one input and answers the primary output)."""

    kind: str
    inputs: Tuple[StepTensor, ...]
    outputs: Tuple[StepTensor, ...]
    graph: str = "model"
    answer: str = "steps"
    horizon: Optional[int] = None
    time_dim: str = "seq"
    encoder: Optional[EncoderTask] = None
    position: Optional[str] = None
    client: Mapping[str, Any] = field(default_factory=dict)
    version: int = TASK_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "client", dict(self.client))
        if self.kind not in KINDS:
            raise TaskError(f"task kind must be one of {sorted(KINDS)}; got {self.kind!r}")
        if self.version != TASK_VERSION:
            raise TaskError(f"unsupported task version {self.version!r} (this tsattn reads {TASK_VERSION})")
        if self.answer not in ANSWERS:
            raise TaskError(f"task answer must be one of {ANSWERS}; got {self.answer!r}")
        if not self.inputs or not self.outputs:
            raise TaskError("a task needs at least one input and one output")
        names = [t.name for t in self.inputs] + [t.name for t in self.outputs]
        if len(set(names)) != len(names):
            raise TaskError(f"task tensor names repeat: {names}")
        if self.horizon is not None and (isinstance(self.horizon, bool) or not isinstance(self.horizon, int)
                                         or self.horizon < 1):
            raise TaskError(f"task horizon must be a positive integer or null; got {self.horizon!r}")
        _name(self.graph, "graph")
        _name(self.time_dim, "time_dim")
        if self.streams:
            missing = [t.name for t in self.inputs + self.outputs if t.time_axis is None]
            if missing:
                raise TaskError(f"a {self.kind} task's step tensors need a time axis; {missing} have none")
        if (self.kind == "seq2seq") != (self.encoder is not None):
            raise TaskError("a seq2seq task, and only one, has an encoder")

    @property
    def streams(self) -> bool:
        """Whether the export is driven as streams (a cached step graph), not by stateless predict calls."""
        return self.kind in STREAMING_KINDS

    @property
    def input_names(self) -> Tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> Tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def check(self, graph_shapes: Mapping[str, Tuple[Mapping[str, Sequence], Mapping[str, Sequence]]]) -> None:
        """Hold the task to the graphs: ``graph_shapes[graph] = ({input name: shape}, {output name: shape})``.
        Every named tensor exists, its time axis holds ``time_dim``; encoder feeds connect existing tensors."""
        if self.graph not in graph_shapes:
            raise TaskError(f"task graph {self.graph!r} is not among the graphs {sorted(graph_shapes)}")
        ins, outs = graph_shapes[self.graph]

        def held(tensors: Sequence[StepTensor], shapes: Mapping[str, Sequence], what: str, graph: str) -> None:
            for t in tensors:
                if t.name not in shapes:
                    raise TaskError(f"task {what} {t.name!r} is not a{'n' if what[0] in 'io' else ''} {what} of graph "
                                    f"{graph!r}; it has {sorted(shapes)}")
                shape = list(shapes[t.name])
                if t.time_axis is not None and (t.time_axis >= len(shape) or (
                        self.streams and shape[t.time_axis] != self.time_dim)):
                    raise TaskError(f"task {what} {t.name!r}: axis {t.time_axis} of its shape {shape} is not the time "
                                    f"dim {self.time_dim!r}")

        held(self.inputs, ins, "input", self.graph)
        held(self.outputs, outs, "output", self.graph)
        if self.position is not None and self.position not in ins:
            raise TaskError(f"task position input {self.position!r} is not an input of graph {self.graph!r}")
        if self.encoder is not None:
            enc = self.encoder
            if enc.graph not in graph_shapes:
                raise TaskError(f"task encoder graph {enc.graph!r} is not among the graphs {sorted(graph_shapes)}")
            e_ins, e_outs = graph_shapes[enc.graph]
            for t in enc.inputs:
                if t.name not in e_ins:
                    raise TaskError(f"task encoder input {t.name!r} is not an input of graph {enc.graph!r}")
            for src, dst in enc.feeds:
                if src not in e_outs:
                    raise TaskError(f"task encoder feed {src!r} is not an output of graph {enc.graph!r}")
                if dst not in ins:
                    raise TaskError(f"task encoder feed target {dst!r} is not an input of graph {self.graph!r}")

    def to_dict(self) -> Dict[str, Any]:
        return {"version": self.version, "kind": self.kind, "graph": self.graph, "time_dim": self.time_dim,
                "answer": self.answer, "horizon": self.horizon, "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs],
                "encoder": None if self.encoder is None else self.encoder.to_dict(), "position": self.position,
                "client": dict(self.client)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Task":
        if not isinstance(d, Mapping):
            raise TaskError(f"task must be an object; got {type(d).__name__}")
        try:
            return cls(kind=d["kind"], inputs=tuple(StepTensor.from_dict(t) for t in d["inputs"]),
                       outputs=tuple(StepTensor.from_dict(t) for t in d["outputs"]), graph=d.get("graph", "model"),
                       answer=d.get("answer", "steps"), horizon=d.get("horizon"), time_dim=d.get("time_dim", "seq"),
                       encoder=None if d.get("encoder") is None else EncoderTask.from_dict(d["encoder"]),
                       position=d.get("position"), client=d.get("client") or {}, version=d.get("version"))
        except TaskError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise TaskError(f"malformed task: {type(exc).__name__}: {exc}") from None

    @classmethod
    def upgrade(cls, d: Mapping[str, Any], graph: str, inputs: Mapping[str, Sequence],
                outputs: Mapping[str, Sequence], cached: bool) -> "Task":
        """A ``Task`` from a version-1 (free-form) task dict, given the shapes of its graph's inputs and outputs
        (cache tensors left out) and whether the graph has a cache.

        ``streaming_forecast`` with one ``input`` (the reference) keeps its kind and answers ``last``; with an
        ``inputs`` list (Hephaestus) it becomes ``sequence``; ``causal_lm`` stays; ``forecast`` is stateless. The
        time axis is where the graph's shape holds ``sequence_dim`` (stateless: the layout's ``time``)."""
        d = dict(d)
        kind = d.pop("kind", None) or ("sequence" if cached else "forecast")
        seq = d.pop("sequence_dim", "seq")
        first_in, first_out = d.pop("input", None), d.pop("output", None)
        names_in = list(d.pop("inputs", None) or ([first_in] if first_in else inputs))
        names_out = d.pop("outputs", None)
        if isinstance(names_out, Mapping):  # CALF's v1 "outputs": {name: description}
            d["output_descriptions"] = dict(names_out)
            names_out = list(names_out)
        names_out = list(names_out or ([first_out] if first_out else outputs))
        for name, listed in ((first_in, names_in), (first_out, names_out)):  # the primary one first
            if name and name in listed:
                listed.remove(name)
                listed.insert(0, name)
        layout = d.get("layout")
        horizon = d.pop("horizon", None)
        d.pop("stateless", None)
        if kind == "forecast" or kind not in STREAMING_KINDS:
            time_dim = "time"

            axis = layout.index("time") if isinstance(layout, list) and "time" in layout[1:] else None
            return cls("forecast", tuple(StepTensor(n, axis) for n in names_in),
                       tuple(StepTensor(n, None) for n in names_out), graph=graph, answer="last",
                       horizon=horizon if isinstance(horizon, int) else None, time_dim=time_dim, client=d)

        def axis_of(name: str, shapes: Mapping[str, Sequence]) -> Optional[int]:
            shape = list(shapes.get(name, ()))
            return shape.index(seq) if seq in shape and shape.index(seq) > 0 else None
        if kind == "streaming_forecast" and (len(names_in) > 1 or "prediction" in d):
            kind = "sequence"  # Hephaestus' v1 task: per-step outputs
        answer = "last" if kind == "streaming_forecast" else "steps"
        return cls(kind, tuple(StepTensor(n, axis_of(n, inputs)) for n in names_in),
                   tuple(StepTensor(n, axis_of(n, outputs)) for n in names_out), graph=graph, answer=answer,
                   horizon=horizon if isinstance(horizon, int) else None, time_dim=seq, client=d)


__all__ = ["ANSWERS", "EncoderTask", "KINDS", "STREAMING_KINDS", "StepTensor", "TASK_VERSION", "Task", "TaskError"]
