"""Export spec of Hephaestus (IndustryTransformer/Hephaestus) patched with a ``hephaestus`` recipe: its
``TimeSeriesDecoder`` as a decode-step graph with a KV cache (``tsattn-export --target Hephaestus --feature F``).

One graph ``model`` serves a prefill (an empty past) and every later step, as for the reference model::

    input   numeric_inputs           float32 (batch, n_numeric, seq)       new time steps of the numeric columns
    input   categorical_inputs       float32 (batch, n_categorical, seq)   token ids of the categorical columns
                                                                             (only when the config has some)
    input   past_key_values.{i}.key / .value  float32 (batch, n_heads * n_columns, past, head_dim)
    output  numeric                  float32 (batch, n_numeric, seq)       TimeSeriesDecoder's numeric output
    output  categorical              float32 (batch, n_categorical, seq, n_tokens)   its categorical logits
    output  present.{i}.key / .value float32 (batch, n_heads * n_columns, past + seq, head_dim)

``numeric[:, :, t]`` is what the decoder outputs at time t (Hephaestus trains it to predict time t + 1).

**The cache and its layout.** Hephaestus attends over time within each column, with the projections shared by
all columns: every (head, column) pair is an independent attention head. The cache keeps the convention's
(batch, kv_heads, length, head_dim) with ``kv_heads = n_heads * n_columns``, index ``h * n_columns + c``
(heads-major, as the attention's own (B, H, C, L, D) tensors flatten): the batch dim stays the number of
streams, so ``CacheSpec.shape(streams, 0)`` is a new stream's cache and ``bytes_per_position`` is right. Keys
come from the column-name embeddings plus positions, values from the cells; both are cached as projected.

**Positions are absolute.** ``TimeSeriesTransformer`` adds a sinusoidal table of ``max_len = 1024`` positions:
position t of a stream is its t-th time step since the stream opened. The cache therefore never slides
(``cache.sliding`` false, ``max_context`` = the table's length): a stream holds at most 1024 time steps, then must
be restarted (the eager model raises beyond; the graph is out of its range). Every attention type decodes
exactly with the cache: ``local``'s window, ``sparse``'s strided keys, ``chunked``'s chunks and the WCMHA decay
are evaluated at true positions over the whole cache (the window only masks, nothing is evicted), so a cached
step equals one forward over all positions (checked at export: ``StepwiseCheck``). Attention built with
``causal=False`` is refused (exit 2): a later key would change an earlier output.

**What runs.** The exported module is the decoder's own ``forward`` (``TimeSeriesDecoder`` ->
``TimeSeriesTransformer`` -> blocks -> heads, the target's code) with two adapters installed (``CachedDecoder``):
each block's attention gets the layer's cache (``past=``, the recipe's attentions take one) and sees the cached
keys as visible in Hephaestus' causal | padding mask of the new positions; the positional encoding is called on
the new steps padded with ``past`` zero rows in front and the padding dropped, so that step t gets the table's
row P + t, exactly as one forward over all positions adds it. The builder checks that the adapted decoder with
an empty cache gives what the untouched decoder gives (``source.cache_check``), and refuses otherwise.

**Data-dependent branches.** ``TimeSeriesDecoder.forward`` replaces NaN numeric inputs by 0 only ``if
torch.isnan(...).any()`` (and likewise for NaN outputs); traced, such a branch is frozen as the example took it.
``CachedDecoder`` therefore applies ``nan_to_num`` to the numeric inputs itself (what the decoder does when a
NaN is present, a no-op otherwise), so the graph treats a missing numeric value as upstream does. Categorical
inputs must not be NaN: upstream turns a NaN categorical into a padding mask over that time step's keys for all
later queries, a state the KV cache does not carry (stream only observed time steps). The default ONNX exporter
for this spec is ``legacy`` (TorchScript-based): torch.export refuses the data-dependent branches.

**Weights.** Without ``--checkpoint`` they are random (``--seed``), the config a tiny synthetic one (columns and
tokens named ``num0``, ``cat0``, ``tok0``; Hephaestus' ``TimeSeriesConfig.generate(df)`` needs a DataFrame and
downloads a tokenizer). With ``--checkpoint`` (a state dict of ``TimeSeriesDecoder``, or of ``TabularDecoder``:
keys under ``model.`` are taken) give the run's ``CHECKPOINT_KEYS``: the column and token lists in the order
``generate`` made them (they fix the token ids), ``d_model``, ``n_heads``, ``n_layers`` and, if not the feature's
default, ``attention_type``/``attention_kwargs``; the reservoir ids and every weight come from the checkpoint.

Options (``--config JSON`` / ``--set KEY=VALUE``): see ``HephaestusExportConfig``.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsattn.export.exporter import _quiet as quiet
from tsattn.export.manifest import CacheSpec, TensorSpec
from tsattn.export.spec import Exportable, ExportSpec, FlatCache, StepwiseCheck, distinct_sizes, step_tensors
from tsattn.export.task import Task
from tsattn.export.target_base import TargetExport, check_option_names
from tsattn.export.targets import TargetError, target_code

KIND = "hephaestus"
SPECIAL_TOKENS = ["[PAD]", "[NUMERIC_MASK]", "[MASK]", "[UNK]", "[NUMERIC_EMBEDDING]"]  # upstream generate()'s
RESERVOIR_WIDTH = 8  # upstream generate() encodes each token into 8 reservoir (sub-word) ids
CHECK_TOL = 1e-5  # the adapted decoder with an empty cache against the untouched one

CHECKPOINT_KEYS = ("numeric_columns", "categorical_columns", "object_tokens", "d_model", "n_heads", "n_layers")
"""What a ``TimeSeriesDecoder`` checkpoint does not hold and must be given with ``--checkpoint``: the token
order (ids) comes from the column and token lists, and a wrong ``n_heads`` would load silently."""


@dataclass
class HephaestusExportConfig:
    """The model the export builds (Hephaestus' ``TimeSeriesConfig`` and ``TimeSeriesDecoder`` arguments).

    numeric_columns, categorical_columns, object_tokens: a count (names ``num0``, ``cat0``, ``tok0``, ...) or
    the list of names (with a checkpoint: the run's, in ``TimeSeriesConfig.generate``'s order); object_tokens are
    the values categorical columns take. ``categorical_columns=0`` exports numeric inputs only (upstream's own
    forward needs categorical inputs: its ``ic(...)`` reads their shape). vocab_size: the reservoir vocabulary
    (random reservoir ids in [1, vocab_size) without a checkpoint; read from the checkpoint otherwise).
    d_model, n_heads, n_layers, attention_type, attention_kwargs: ``TimeSeriesDecoder``'s arguments
    (attention_type None: the feature's type, ``standard`` for ``efficient``).
    """

    numeric_columns: Any = 3
    categorical_columns: Any = 1
    object_tokens: Any = 4
    vocab_size: Optional[int] = None
    d_model: int = 16
    n_heads: int = 2
    n_layers: int = 2
    attention_type: Optional[str] = None
    attention_kwargs: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_options(cls, options: Mapping[str, Any], feature: str, with_checkpoint: bool) -> "HephaestusExportConfig":
        """Validate ``options`` (unknown keys, types, ranges); ``TargetError`` naming the key."""
        check_option_names(cls, options, "Hephaestus", with_checkpoint, CHECKPOINT_KEYS)
        config = cls(**dict(options))
        if config.attention_type is None:
            config.attention_type = "standard" if feature == "efficient" else feature
        if not isinstance(config.attention_type, str):
            raise TargetError(f"Hephaestus option attention_type must be a name; got {config.attention_type!r}")
        if not isinstance(config.attention_kwargs, dict):
            raise TargetError(f"Hephaestus option attention_kwargs must be a JSON object; got "
                              f"{config.attention_kwargs!r}")
        for name, least in (("d_model", 1), ("n_heads", 1), ("n_layers", 1), ("vocab_size", 2)):
            value = getattr(config, name)
            if name == "vocab_size" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise TargetError(f"Hephaestus option {name} must be an integer >= {least}; got {value!r}")
        if config.d_model % config.n_heads:
            raise TargetError(f"Hephaestus option d_model ({config.d_model}) must be a multiple of n_heads "
                              f"({config.n_heads})")
        for name, prefix, least in (("numeric_columns", "num", 1), ("categorical_columns", "cat", 0),
                                    ("object_tokens", "tok", 0)):
            setattr(config, name, _names(name, getattr(config, name), prefix, least))
        if config.categorical_columns and not config.object_tokens:
            raise TargetError("Hephaestus option object_tokens: categorical columns need at least one token")
        return config

    @property
    def tokens(self) -> List[str]:
        """Every token, in ``TimeSeriesConfig.generate``'s order (its index is the token id)."""
        return SPECIAL_TOKENS + self.numeric_columns + self.object_tokens + self.categorical_columns

    @property
    def n_columns(self) -> int:
        return len(self.numeric_columns) + len(self.categorical_columns)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _names(option: str, value: Any, prefix: str, least: int) -> List[str]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < least:
            raise TargetError(f"Hephaestus option {option} must be >= {least}; got {value}")
        return [f"{prefix}{i}" for i in range(value)]
    if isinstance(value, list) and all(isinstance(v, str) for v in value) and len(set(value)) == len(value) \
            and len(value) >= least:
        return list(value)
    raise TargetError(f"Hephaestus option {option} must be a count or a list of distinct names; got {value!r}")


def time_series_config(config_class: type, config: HephaestusExportConfig, reservoir: Tensor,
                       vocab_size: int) -> Any:
    """A Hephaestus ``TimeSeriesConfig`` with the fields ``TimeSeriesConfig.generate(df)`` sets (tokenizer aside)."""
    tokens = config.tokens
    token_dict = {t: i for i, t in enumerate(tokens)}
    return config_class(
        numeric_token="[NUMERIC_EMBEDDING]",
        numeric_mask="[NUMERIC_MASK]",
        numeric_col_tokens=list(config.numeric_columns),
        categorical_col_tokens=list(config.categorical_columns),
        tokens=tokens,
        token_dict=token_dict,
        token_decoder_dict={i: t for i, t in enumerate(tokens)},
        n_tokens=len(tokens),
        numeric_indices=torch.tensor([token_dict[c] for c in config.numeric_columns]),
        categorical_indices=torch.tensor([token_dict[c] for c in config.categorical_columns], dtype=torch.long),
        object_tokens=list(config.object_tokens),
        numeric_mask_token=token_dict["[NUMERIC_MASK]"],
        reservoir_vocab=[],
        reservoir_encoded=reservoir,
        tokenizer=None,
        vocab_size=vocab_size,
        ds_length=None,
        n_columns=config.n_columns,
    )


# ------------------------------------------------------------------------------------------------- the adapters


class _CachedAttention(nn.Module):
    """A block's attention, called by the block as ``(query, key, value, mask)``, given the layer's cache
    (``past``, set by ``CachedDecoder`` for one call) and keeping the new one (``present``).

    ``mask`` is Hephaestus' causal | padding mask of the new positions, (B, L, L) or (L, L): the cached keys are
    prepended as visible (False / 0), giving (.., L, P + L)."""

    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        self.attention = attention
        self.past: Optional[Tuple[Tensor, Tensor]] = None
        self.present: Optional[Tuple[Tensor, Tensor]] = None

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Optional[Tensor] = None):
        if self.past is None:
            raise RuntimeError("_CachedAttention runs inside CachedDecoder.forward only")
        if mask is not None:
            seen = torch.zeros(*mask.shape[:-1], self.past[0].shape[2], dtype=mask.dtype, device=mask.device)
            mask = torch.cat([seen, mask], dim=-1)
        out, self.present = self.attention(query, key, value, mask=mask, past=self.past)
        return out, None


class _ShiftedPositions(nn.Module):
    """Hephaestus' positional encoding at positions P .. P + L - 1 (P = ``offset``, set for one call): the table
    module itself, called on the new steps with P zero steps in front, which are then dropped."""

    def __init__(self, positions: nn.Module) -> None:
        super().__init__()
        self.positions = positions
        self.offset: Any = None

    def forward(self, x: Tensor) -> Tensor:  # (B, C, L, d)
        if self.offset is None:
            raise RuntimeError("_ShiftedPositions runs inside CachedDecoder.forward only")
        return self.positions(F.pad(x, (0, 0, self.offset, 0)))[:, :, self.offset:]


class CachedDecoder(nn.Module):
    """A patched ``TimeSeriesDecoder`` decoding with a KV cache (see the module docstring).

    ``forward(numeric_inputs, [categorical_inputs,] past) -> ((numeric, [categorical]), present)``: inputs
    (B, n, L) of the L new time steps; ``past`` one (key, value) per block, each (B, n_heads * n_columns, P,
    head_dim) (P = 0: a new stream); ``present`` the same with the L steps appended. Wraps ``decoder`` in place
    (its blocks' attentions and its positional encoding get adapters); use a copy to keep the original.
    """

    def __init__(self, decoder: nn.Module, categorical: bool) -> None:
        super().__init__()
        self.decoder = decoder
        self.categorical = bool(categorical)
        tst = decoder.time_series_transformer
        blocks = [tst.transformer_block_0, *tst.transformer_block_chain]
        self.adapters: List[_CachedAttention] = []
        for block in blocks:
            adapter = _CachedAttention(block.multi_head_attention)
            block.multi_head_attention = adapter
            self.adapters.append(adapter)
        self.positions = _ShiftedPositions(tst.pos_encoder)
        tst.pos_encoder = self.positions

    def forward(self, *args: Any):
        *inputs, past = args
        numeric = inputs[0]
        categorical = inputs[1] if self.categorical else None
        for adapter, kv in zip(self.adapters, past):
            adapter.past = kv
        self.positions.offset = past[0][0].shape[2]
        try:
            # what TimeSeriesDecoder.forward does `if torch.isnan(numeric_inputs).any()`, unconditionally
            numeric = torch.nan_to_num(numeric.to(torch.float32), nan=0.0)
            out = self.decoder(numeric, categorical, deterministic=True)
            present = tuple(adapter.present for adapter in self.adapters)
        finally:
            for adapter in self.adapters:
                adapter.past = adapter.present = None
            self.positions.offset = None
        outputs = (out.numeric,) + ((out.categorical,) if self.categorical else ())
        return outputs, present


# ---------------------------------------------------------------------------------------------------- the spec


def hephaestus_spec(config: HephaestusExportConfig, max_len: int) -> ExportSpec:
    """The graph ``model``: new time steps and the caches in, outputs of those steps and the caches out."""
    n_num, n_cat = len(config.numeric_columns), len(config.categorical_columns)
    n_tokens = len(config.tokens)
    head_dim = config.d_model // config.n_heads
    cache = CacheSpec(layers=config.n_layers, kv_heads=config.n_heads * config.n_columns, head_dim=head_dim,
                      max_context=max_len, sliding=False)
    inputs = [TensorSpec("numeric_inputs", "float32", ("batch", n_num, "seq"))]
    outputs = [TensorSpec("numeric", "float32", ("batch", n_num, "seq"))]
    if n_cat:
        inputs.append(TensorSpec("categorical_inputs", "float32", ("batch", n_cat, "seq")))
        outputs.append(TensorSpec("categorical", "float32", ("batch", n_cat, "seq", n_tokens)))
    fixed = {n_num, n_cat, n_tokens, cache.kv_heads, head_dim} - {0}
    example = distinct_sizes(["batch", "seq", "past"], avoid=fixed)
    object_ids = torch.tensor([config.tokens.index(t) for t in config.object_tokens], dtype=torch.float32)

    def make_inputs(sizes: Mapping[str, int], g: torch.Generator) -> Tuple[Tensor, ...]:
        b, n, p = sizes["batch"], sizes["seq"], sizes["past"]
        numeric = torch.randn(b, n_num, n, generator=g)
        numeric[torch.rand(b, n_num, n, generator=g) < 0.1] = float("nan")  # missing values: 0, as upstream
        out = [numeric]
        if n_cat:
            out.append(object_ids[torch.randint(0, len(object_ids), (b, n_cat, n), generator=g)])
        shape = cache.shape(b, p)
        out += [torch.randn(shape, generator=g) for _ in range(2 * config.n_layers)]
        return tuple(out)

    lengths = (5, 1, 1, 3, 1, 2, 1)
    return ExportSpec(
        name=f"hephaestus-{config.attention_type}",
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        cache=cache,
        example_sizes=example,
        # a new stream's first step, a step after a long past, a prefill, a chunk after a past
        parity_sizes=({"batch": 1, "seq": 1, "past": 0}, {"batch": 2, "seq": 1, "past": 17},
                      {"batch": 4, "seq": 11, "past": 0}, {"batch": 2, "seq": 6, "past": 9}),
        dim_min={"past": 0},
        dim_max={"seq": max_len, "past": max_len - 1},
        stepwise=StepwiseCheck("seq", lengths),
        make_inputs=make_inputs,
        exporter="legacy",
        unsupported_exporters={"dynamo": "torch.export stops at TimeSeriesDecoder.forward's data-dependent "
                                         "`if torch.isnan(...).any()` branches (the legacy exporter traces them)"},
        task=Task("sequence", step_tensors(inputs), step_tensors(outputs), horizon=1, client={
            "layout": ["batch", "columns", "seq"],
            "prediction": "output at time t is the decoder's prediction for time t + 1 (Hephaestus trains it so)",
            "numeric_columns": list(config.numeric_columns),
            "categorical_columns": list(config.categorical_columns),
            "tokens": config.tokens,
            "categorical_values": "token ids (float32), indices into tokens; never NaN (padding is not streamed)",
            "missing": "a NaN numeric input counts as 0, as TimeSeriesDecoder does",
            "normalisation": "none in the graph: inputs as Hephaestus' TimeSeriesDS gives them",
            "positions": f"absolute: a stream holds at most {max_len} time steps (the positional table), then "
                         "restart it; the cache does not slide",
            "cache_heads": {"n_heads": config.n_heads, "n_columns": config.n_columns,
                            "order": "kv head h * n_columns + c (head-major)"},
        }),
    )


# ------------------------------------------------------------------------------------------------- the builder


def _attentions(decoder: nn.Module) -> List[nn.Module]:
    tst = decoder.time_series_transformer
    return [b.multi_head_attention for b in [tst.transformer_block_0, *tst.transformer_block_chain]]


def _upstream_hint(exc: BaseException, where: str) -> str:
    if isinstance(exc, AttributeError) and "'NoneType' object has no attribute 'shape'" in str(exc):
        return ("upstream's TimeSeriesTransformer.forward needs categorical inputs (its ic(...) call reads their "
                "shape): export a config with categorical_columns >= 1")
    if isinstance(exc, ModuleNotFoundError):
        return (f"Hephaestus' package imports {exc.name!r} (hephaestus/__init__.py imports its analysis and "
                f"training modules): install it, e.g. `pip install {exc.name}` (or `pip install --no-deps` for a "
                f"package that would pull another torch)")
    return ""


def _silence_icecream(module: Any) -> bool:
    """Upstream's models print shapes through icecream's ``ic`` on every forward; switch it off (this process)."""
    ic = getattr(module, "ic", None)
    if ic is not None and hasattr(ic, "disable"):
        ic.disable()
        return True
    return False


def _reservoir(state: Optional[Mapping[str, Tensor]], config: HephaestusExportConfig, seed: int,
               ) -> Tuple[Tensor, int]:
    """The reservoir ids (n_tokens, 8) and the vocabulary size: from the checkpoint, or random."""
    key = "time_series_transformer.embedding.token_reservoir_lookup"
    n_tokens = len(config.tokens)
    if state is not None and key in state:
        ids = state[key].long().clone()
        if ids.shape[0] != n_tokens:
            raise TargetError(f"the checkpoint's {key} has {ids.shape[0]} tokens; the given columns and tokens make "
                              f"{n_tokens} ({len(SPECIAL_TOKENS)} special + numeric + object + categorical)")
        vocab = state["time_series_transformer.embedding.embedding.weight"].shape[0]
        return ids, config.vocab_size or int(vocab)
    vocab = config.vocab_size or 64
    g = torch.Generator().manual_seed(seed + 7)
    return torch.randint(1, vocab, (n_tokens, RESERVOIR_WIDTH), generator=g), vocab


def _decoder_state(state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """A ``TimeSeriesDecoder`` state dict, or a ``TabularDecoder``'s (its decoder is ``model``)."""
    if any(k.startswith("time_series_transformer.") for k in state):
        return dict(state)
    inner = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    if any(k.startswith("time_series_transformer.") for k in inner):
        return inner
    raise TargetError("the checkpoint holds no TimeSeriesDecoder weights (keys time_series_transformer.*, or "
                      "model.time_series_transformer.* for a TabularDecoder)")


class HephaestusExport(TargetExport):
    """Hephaestus patched with a feature: its ``TimeSeriesDecoder`` with a KV cache (``build``).

    Raises ``TargetError`` (not patched, bad options, a non-causal attention, the target's code fails, the cached
    path differs from the decoder), ``CheckpointRefused``, ``FileNotFoundError``.
    """

    kind = KIND
    random_weights = (f"not a trained model, a synthetic config; pass --checkpoint (and the run's "
                      f"{', '.join(CHECKPOINT_KEYS)}) for trained weights")

    def read_checkpoint(self, path: Path):
        raw, config = super().read_checkpoint(path)
        return _decoder_state(raw), config

    def build(self) -> Exportable:
        target, feature, seed, state, checkpoint = self.target, self.feature, self.seed, self.state, self.checkpoint
        config = HephaestusExportConfig.from_options(self.fields, feature, with_checkpoint=checkpoint is not None)

        models = target.import_module("hephaestus.timeseries_models.models")
        icecream = _silence_icecream(models)
        enabled = tuple(getattr(models, "ENABLED_ATTENTION_TYPES", ()))
        if config.attention_type not in enabled:
            raise TargetError(f"attention_type {config.attention_type!r} is not enabled in {target.root} (it "
                              f"enables {list(enabled) or 'none: is models.py patched?'}); inject its feature or "
                              f"choose another with --set attention_type=NAME")
        reservoir, vocab = _reservoir(state, config, seed)
        ts_config = time_series_config(models.TimeSeriesConfig, config, reservoir, vocab)
        with target_code(f"building TimeSeriesDecoder from {target.root}", target.root, _upstream_hint), quiet():
            torch.manual_seed(seed)
            decoder = models.TimeSeriesDecoder(ts_config, config.d_model, config.n_heads, n_layers=config.n_layers,
                                               attention_type=config.attention_type,
                                               attention_kwargs=dict(config.attention_kwargs))
        self.load_weights(decoder)
        decoder.eval()
        attentions = _attentions(decoder)
        if not all(callable(getattr(a, "attend_cached", None)) for a in attentions):
            raise TargetError(f"the attention of {target.root}'s TransformerBlock ({type(attentions[0]).__name__}) "
                              f"takes no KV cache: models.py does not build it with build_attention. Re-run "
                              f"`tsattn-inject --target {target.root} --feature {feature}`")
        if not all(a.causal for a in attentions):
            raise TargetError("a cached decode graph needs causal attention (attention_kwargs causal=false: a later "
                              "time step would change earlier outputs); export without causal=false")

        n_cat = len(config.categorical_columns)
        pos = decoder.time_series_transformer.pos_encoder
        max_len = int(getattr(pos, "max_len", 1024))
        spec = hephaestus_spec(config, max_len)
        cached = CachedDecoder(copy.deepcopy(decoder), categorical=n_cat > 0).eval()
        exported = FlatCache(cached, n_inputs=len(spec.inputs), layers=config.n_layers).eval()

        # the adapted decoder with an empty cache must be the decoder itself
        probe = spec.example_inputs({"batch": 2, "seq": 7, "past": 0}, seed=seed + 11)
        args = (probe[0], probe[1] if n_cat else None)
        with target_code("running TimeSeriesDecoder's forward", target.root, _upstream_hint), torch.no_grad(), quiet():
            want = decoder(torch.nan_to_num(args[0], nan=0.0), args[1], deterministic=True)
            got = exported(*probe)
        want = (want.numeric,) + ((want.categorical,) if n_cat else ())
        diff = max(float((a - b).abs().max()) for a, b in zip(got, want))
        if not diff <= CHECK_TOL:
            raise TargetError(f"the cached decoder differs from {target.root}'s TimeSeriesDecoder by {diff:.3g} > "
                              f"{CHECK_TOL} with an empty cache: its forward no longer has the shape this spec adapts "
                              f"(blocks calling multi_head_attention(query, key, value, mask), pos_encoder on the "
                              f"embeddings)")

        source = self.source(
            model="hephaestus.timeseries_models.models.TimeSeriesDecoder",
            exported=[t.name for t in spec.outputs],
            config=config.to_dict(),
            attention={"type": config.attention_type, "kwargs": dict(config.attention_kwargs),
                       "classes": sorted({type(a).__name__ for a in attentions}), "enabled": list(enabled)},
            cache_check={"max_abs_diff_vs_decoder": diff, "tol": CHECK_TOL, "sizes": {"batch": 2, "seq": 7}},
            max_positions=max_len,
            icecream_disabled=icecream,
        )
        return Exportable(exported, spec, source)


build_hephaestus_export = HephaestusExport.export
