"""``tsattn-export``: export a bundled model or a patched target to ONNX and TorchScript, check parity, write a
manifest. See ``main``'s ``--help`` for usage and exit codes."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from tsattn.cliutil import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, setup_logging

EXIT_PARITY = 3  # parity or graph-contract failure: nothing written
EXIT_CHECKPOINT = 4  # checkpoint refused: needs arbitrary unpickling, unreadable, or does not fit the model
EXIT_TRITON = 5  # --triton-repo: the Triton model repository could not be written (the export itself was)

PROG = "tsattn-export"
log = logging.getLogger("tsattn.export")

EPILOG = f"""\
examples:
  tsattn-export --model reference --out exported_models/reference
  tsattn-export --model reference --out /tmp/ref --checkpoint ref.pt --max-context 2048
  tsattn-export --model reference --out /tmp/small --set d_model=64 --set n_layers=2 --format onnx --json
  tsattn-export --model reference --out /tmp/ref --exporter legacy --opset 17
  tsattn-export --model autoregressive --out /tmp/ar --set embed_dim=64 --set attention_type=mqa
  tsattn-export --model autoregressive --out /tmp/ar-window --max-context 128     # a sliding window of 128
  tsattn-export --model encoder_decoder --out /tmp/ed --set decay=powerlaw --set alpha=0.8
  tsattn-export --target ./CALF --feature wcmha --out exported_models/calf-wcmha
  tsattn-export --target ./CALF --feature wcmha --out /tmp/calf --checkpoint checkpoint.pth \\
      --config '{{"seq_len": 96, "pred_len": 96, "gpt_layers": 6, "r": 8, "lora_alpha": 32}}'
  tsattn-export --target ./CALF --feature wcmha --out /tmp/calf --set enc_in=7 --exporter legacy
  tsattn-export --model reference --out /tmp/ref --triton-repo /srv/triton/models   # + a Triton model repository
  tsattn-export --target ./Hephaestus --feature efficient --out /tmp/heph --set attention_type=local \\
      --set 'attention_kwargs={{"window_size": 64}}' --set numeric_columns=4 --set categorical_columns=2
  tsattn-export --target ./Wave-Transformer --feature enhancements --out /tmp/wave --exporter legacy
  tsattn-export --target ./Wave-Transformer --feature wcmha --out /tmp/wave --checkpoint runs/wave_model_dir \\
      --set encoder=my_encoder.py:TokenEncoder \\
      --set decoder=wave_transformer.language_modelling.token_decoder:WaveToTokenDecoder
  tsattn-export --list

Model options come from --config (a JSON object, or a .json file holding one) and then --set KEY=VALUE (JSON
values), which overrides it. A target's options are its model's arguments (CALF: the names of its run.py, e.g.
seq_len, pred_len, gpt_layers, r, lora_alpha; Hephaestus: numeric_columns, categorical_columns, object_tokens,
d_model, n_heads, n_layers, attention_type, attention_kwargs; seed 002's autoregressive / encoder_decoder:
input_dim, embed_dim, ffn_latent_dim, num_layers (num_encoder_layers, num_decoder_layers), num_heads,
output_dim, max_seq_len, attention_type, num_groups, decay, alpha, use_moe, num_experts, capacity, topk,
expanding_context; Wave-Transformer: WaveTransformer's arguments, e.g.
use_pcca, wcmha_decay, and encoder/decoder as module:Class or file.py:Class, encoder_kwargs, decoder_kwargs,
vocab_size; see the README). Without --checkpoint every weight is random (the manifest's source says so); a
target's GPT-2 is then built from GPT2Config, nothing is downloaded. Wave-Transformer's --checkpoint is the
directory WaveTransformer.save() writes (or a state-dict file).

The export directory holds <graph>.onnx, <graph>.pt (TorchScript) and manifest.json (files with sha256, graph
inputs/outputs with symbolic dims, the KV-cache spec, parity results, versions); see exported_models/README.md.
It is written to a temporary directory beside --out and renamed into place only when every check passed.
--triton-repo DIR also writes DIR/<name>/config.pbtxt and DIR/<name>/1/model.onnx for Triton Inference Server
(ONNX Runtime backend; a KV cache becomes sequence_batching implicit state; see tsattn/export/triton.py);
--triton-backend python writes 1/model.py instead, which runs the graph with ONNX Runtime and keeps each
sequence's cache (tsattn/export/triton_python.py).

In a target's own environment (e.g. CALF's pinned one: transformers 4.30.1, peft 0.9.0), tsattn-export needs
torch, numpy, onnx, onnxscript, onnxruntime and tqdm besides the target's own packages; not libcst or gitpython
when the clone has tsattn-inject's record (.git/tsattn/), which it reads with the standard library
(`pip install --no-deps tsattn` then `pip install onnx onnxscript onnxruntime tqdm`). einops < 0.7 breaks the
dynamo exporter's torch.export (`unhashable type: non-nested SymInt`): `pip install 'einops>=0.7'` (CALF runs
with it) or --exporter legacy; tsattn-export warns when the model's code loaded such an einops.

exit codes:
  0  exported, every parity check within tolerance
  1  internal error (a traceback is printed)
  2  usage error: bad arguments or model options, unknown model, --out not empty (see --overwrite), missing
     checkpoint file, no export spec for the target/feature, a target that is not patched with the feature, a
     target whose own code fails to build or run the model (the message names its file and line), an exporter
     the model cannot be exported with (Hephaestus: dynamo), or an existing --triton-repo entry
  {EXIT_PARITY}  parity failure (an output differs from eager beyond the tolerance) or the exported graph breaks
     its spec (e.g. a dim the exporter specialised); the failing output and error are printed, nothing is written
  {EXIT_CHECKPOINT}  checkpoint refused: it needs arbitrary unpickling (torch.load(weights_only=True) fails), is
     unreadable, or does not fit the model
  {EXIT_TRITON}  --triton-repo: the Triton repository entry could not be written (the export was written)
"""


def _progress(text: str) -> None:
    """A progress line on stderr, only on a terminal (the export itself shows a bar there too)."""
    if sys.stderr.isatty():
        print(f"{PROG}: {text} ...", file=sys.stderr, flush=True)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _config(text: Optional[str]) -> Dict[str, Any]:
    """``--config``: a JSON object, or the path of a file holding one."""
    if text is None:
        return {}
    stripped = text.strip()
    if not stripped.startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise ValueError(f"--config expects a JSON object or a .json file; {text!r} is neither")
        stripped = path.read_text()
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--config: invalid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"--config: expected a JSON object; got {type(value).__name__}")
    return value


def _options(pairs: Sequence[str], max_context: Optional[str], config: Optional[str] = None) -> Dict[str, Any]:
    options: Dict[str, Any] = _config(config)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE; got {pair!r}")
        options[key.strip()] = _parse_value(value.strip())
    if max_context is not None:
        if max_context.lower() in ("none", "0"):
            options["max_context"] = None
        else:
            try:
                options["max_context"] = int(max_context)
            except ValueError:
                raise ValueError(f"--max-context expects a positive integer or 'none'; got {max_context!r}") from None
    return options


def build_parser() -> argparse.ArgumentParser:
    from tsattn.export.exporter import DEFAULT_OPSET, FORMATS
    from tsattn.export.models import MODELS
    from tsattn.export.spec import EXPORTERS

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Export a bundled model or a patched target to ONNX and TorchScript with parity checks and a "
                    "manifest (sha256 of every file, graph signatures, KV-cache spec, parity table).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", choices=sorted(MODELS), help="a bundled model: the reference forecaster, seed 002's "
                                                               "autoregressive or encoder_decoder (see --list)")
    what.add_argument("--target", metavar="REPO_DIR", type=Path, help="a patched clone of a target repository")
    what.add_argument("--list", action="store_true", help="list the bundled models and registered target specs")
    parser.add_argument("--feature", metavar="F", help="the injected feature to export (with --target)")
    parser.add_argument("--out", metavar="DIR", type=Path, help="export directory (must be absent or empty, "
                        "unless --overwrite)")
    parser.add_argument("--checkpoint", metavar="PATH", type=Path,
                        help="weights, loaded with torch.load(weights_only=True); default: random weights (--seed)")
    parser.add_argument("--config", metavar="JSON",
                        help="model options as a JSON object or a .json file (--set overrides them)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="options",
                        help="a model option (repeatable; JSON values), e.g. --set d_model=64 --set decay=step")
    parser.add_argument("--max-context", metavar="N",
                        help="attention window and KV-cache capacity (a model option; 'none': unbounded)")
    parser.add_argument("--format", default=",".join(FORMATS),
                        help=f"comma-separated subset of {','.join(FORMATS)} (default: both)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset (default {DEFAULT_OPSET}; see the README on the choice)")
    parser.add_argument("--exporter", choices=EXPORTERS,
                        help="ONNX exporter: dynamo (torch.export-based) or legacy (TorchScript-based, deprecated by "
                             "torch, about 20x faster to export); default: the model's (dynamo; legacy for "
                             "Hephaestus, whose data-dependent branches torch.export refuses)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights without --checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --out (atomically), and an existing --triton-repo entry")
    parser.add_argument("--triton-repo", metavar="DIR", type=Path,
                        help="also write a Triton Inference Server model repository entry DIR/<name>/")
    parser.add_argument("--triton-name", metavar="NAME", help="the Triton model name (default: the export's name)")
    parser.add_argument("--triton-instances", metavar="N", type=int, default=1,
                        help="Triton model instances (instance_group count, default 1); sequences run in parallel "
                             "across instances")
    parser.add_argument("--triton-backend", choices=("onnxruntime", "python"), default="onnxruntime",
                        help="onnxruntime (default; Triton keeps the cache as implicit state) or python (model.py "
                             "runs the graph with ONNX Runtime and keeps each sequence's cache: for servers without "
                             "the ONNX Runtime backend, e.g. the one nvidia-pytriton ships)")
    parser.add_argument("--triton-python-env", metavar="PATH",
                        help="with --triton-backend python: a virtual environment with numpy and onnxruntime for the "
                             "backend's stub (EXECUTION_ENV_PATH)")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON on stdout")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (and the exporters' own)")
    return parser


def _listing() -> str:
    from tsattn.export.models import MODELS
    from tsattn.export.targets import PLANNED, TARGETS

    width = max(map(len, [*MODELS, *TARGETS]))  # one column for both lists, as wide as the longest name
    lines = ["models:"]
    lines += [f"  {name:{width}s} {entry.description}" for name, entry in sorted(MODELS.items())]
    lines.append("targets:")
    lines += [f"  {kind:{width}s} features: {', '.join(e.features)}" for kind, e in sorted(TARGETS.items())]
    missing = [k for k in PLANNED if k not in TARGETS]
    if missing:
        lines.append(f"  (no export spec yet for: {', '.join(missing)})")
    return "\n".join(lines)


def _report(manifest, out) -> None:
    from tsattn.export.manifest import parity_table

    print(f"exported {manifest.name} to {manifest.root}"
          + (f" (ONNX: {manifest.exporter} exporter, opset {manifest.opset})" if manifest.opset else ""), file=out)
    for f in manifest.files:
        print(f"  {f.path:20s} {f.bytes:>10d} bytes  sha256 {f.sha256[:16]}...", file=out)
    print(f"  {'manifest.json':20s}", file=out)
    src = manifest.source
    if src.get("kind") == "target":
        commit = (src.get("upstream_commit") or "?")[:12]
        print(f"source: {src.get('target')} {src.get('repo')} (upstream {commit}), feature {src.get('feature')} "
              f"{src.get('options')}; exported {', '.join(src.get('exported') or [])}", file=out)
    if src.get("weights"):
        print(f"weights: {src['weights']}", file=out)
    if manifest.cache is None:
        print("cache: none (stateless graph)", file=out)
    if manifest.cache is not None:
        c = manifest.cache
        if c.tensors:
            parts = sorted({t.part for t in c.tensors})
            print(f"cache: {c.layers} slots, {len(c.tensors)} tensors ({', '.join(parts)}), each (batch, heads, "
                  f"length, dim) as listed in the manifest's cache.tensors, {c.bytes_per_position()} bytes per "
                  f"position and row", file=out)
        else:
            print(f"cache: {c.layers} layers x (key, value), each (batch, {c.kv_heads}, length, {c.head_dim})",
                  file=out)
        print(f"  max_context {c.max_context}" + ("" if c.sliding else " (absolute positions: a stream holds at "
              "most max_context positions, then restart it)"), file=out)
    print(parity_table(manifest.parity), file=out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.list:
        print(_listing())
        return EXIT_OK
    if args.out is None:
        parser.error("--out DIR is required")
    if args.target is not None and not args.feature:
        parser.error("--target needs --feature F")
    if args.feature and args.target is None:
        parser.error("--feature goes with --target")

    from tsattn.export.checkpoint import CheckpointRefused
    from tsattn.export.exporter import (FORMATS, MIN_OPSET, GraphContractError, ParityError, check_out_dir, export,
                                        known_breakage, max_opset)
    from tsattn.export.manifest import parity_table
    from tsattn.export.models import MODELS
    from tsattn.export.spec import EXPORTERS
    from tsattn.export.targets import NoExportSpec, find_target

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        parser.error(f"--format: expected a comma-separated subset of {','.join(FORMATS)}; got {args.format!r}")
    try:
        options = _options(args.options, args.max_context, args.config)
        check_out_dir(args.out, args.overwrite)
        if args.checkpoint is not None and not args.checkpoint.exists():
            raise FileNotFoundError(f"--checkpoint {args.checkpoint}: no such file or directory")
        if args.target is not None:
            if not args.target.is_dir():
                raise FileNotFoundError(f"--target {args.target}: no such directory")
            entry = find_target(args.target.resolve(), args.feature)
            _progress(f"building {entry.kind}/{args.feature} from {args.target} (its own model code)")
            exportable = entry.build(args.target.resolve(), args.feature, options, args.checkpoint, args.seed)
        else:
            _progress(f"building {args.model}")
            exportable = MODELS[args.model].build(options, args.checkpoint, args.seed)
    except CheckpointRefused as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_CHECKPOINT
    except (ValueError, FileNotFoundError, FileExistsError, NoExportSpec) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception:
        traceback.print_exc()
        return EXIT_INTERNAL

    weights = exportable.source.get("weights")
    if isinstance(weights, str) and weights.startswith("random"):
        log.warning("weights are %s", weights)
    triton_entry = None
    if args.triton_repo is not None:
        if args.triton_instances < 1:
            parser.error(f"--triton-instances must be positive; got {args.triton_instances}")
        triton_entry = args.triton_repo / (args.triton_name or exportable.spec.name)
        if triton_entry.exists() and not args.overwrite:
            print(f"{PROG}: --triton-repo: {triton_entry} exists (pass --overwrite to replace it)", file=sys.stderr)
            return EXIT_USAGE
        from tsattn.export.exporter import task_of
        from tsattn.export.manifest import GraphSpec
        from tsattn.export.triton import unsupported

        spec = exportable.spec
        graphs = {sp.graph: GraphSpec(sp.graph, tuple(sp.graph_inputs), tuple(sp.graph_outputs))
                  for sp in [spec] + [x for _, x in exportable.extra]}
        problem = unsupported(task_of(spec, graphs), spec.cache, spec.graph_inputs)
        if problem:
            print(f"{PROG}: --triton-repo: {spec.name} cannot be laid out for Triton, nothing exported: {problem}",
                  file=sys.stderr)
            return EXIT_USAGE
    exporter = args.exporter or exportable.spec.exporter
    if "onnx" in formats and exporter in exportable.spec.unsupported_exporters:
        print(f"{PROG}: {exportable.spec.name} cannot be exported with the {exporter} exporter: "
              f"{exportable.spec.unsupported_exporters[exporter]}; use --exporter "
              f"{' or '.join(e for e in EXPORTERS if e not in exportable.spec.unsupported_exporters)}", file=sys.stderr)
        return EXIT_USAGE
    if "onnx" in formats and not MIN_OPSET <= args.opset <= max_opset(exporter):
        parser.error(f"--opset must be between {MIN_OPSET} and {max_opset(exporter)} with the {exporter} exporter; "
                     f"got {args.opset}")
    # a package the model's code loaded, in a version known to break the dynamo exporter (CALF pins einops 0.4.1)
    breakage = known_breakage() if "onnx" in formats and exporter == "dynamo" and "einops" in sys.modules else None
    if breakage:
        log.warning("%s", breakage)
    try:
        manifest = export(exportable, args.out, formats=formats, opset=args.opset, exporter=exporter,
                          overwrite=args.overwrite, progress=True)
    except ParityError as exc:
        print(parity_table(exc.rows), file=sys.stderr)
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_PARITY
    except GraphContractError as exc:
        print(f"{PROG}: the exported graph breaks its spec, nothing written: {exc}", file=sys.stderr)
        if breakage:
            print(f"{PROG}: likely cause: {breakage}", file=sys.stderr)
        return EXIT_PARITY
    except FileExistsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception:
        traceback.print_exc()
        if breakage:
            print(f"{PROG}: likely cause: {breakage}", file=sys.stderr)
        return EXIT_INTERNAL
    triton_dir = None
    if triton_entry is not None:
        from tsattn.export.triton import write_triton_repo

        try:
            triton_dir = write_triton_repo(manifest, args.triton_repo, model_name=triton_entry.name,
                                           instances=args.triton_instances, overwrite=args.overwrite,
                                           backend=args.triton_backend, python_env=args.triton_python_env)
        except (ValueError, OSError) as exc:
            print(f"{PROG}: the export is at {manifest.root}, but --triton-repo failed: {exc}", file=sys.stderr)
            return EXIT_TRITON
    if args.json:
        print(json.dumps(dict(manifest.to_dict(), root=str(manifest.root),
                              triton=None if triton_dir is None else str(triton_dir)), indent=1))
    else:
        _report(manifest, sys.stdout)
        if triton_dir is not None:
            files = "model.py, model.onnx" if args.triton_backend == "python" else "model.onnx"
            print(f"Triton model repository entry: {triton_dir} (config.pbtxt, 1/{files})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
