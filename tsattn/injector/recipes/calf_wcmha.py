"""CALF + Powerformer WCMHA: the time branch's GPT-2 attends with the weighted causal (decay) bias.

Upstream ``Hank0626/CALF`` builds two GPT-2s in ``models/CALF.py``'s ``Model.__init__``: ``self.gpt2`` (the time
branch, wrapped in peft's LoRA on ``c_attn``) and ``self.gpt2_text`` (the text branch), both
``AccustumGPT2Model.from_pretrained('gpt2', ...)``. This recipe:

- adds ``models/PowerformerAttention.py`` (the WCMHA template ``tsattn/modules/wcmha.py``, verbatim) and
  ``models/PowerformerGPT2.py`` (``calf_templates/PowerformerGPT2.py``: GPT-2 attention, block and model on
  it, with GPT-2's parameter names);
- adds ``PowerformerAccustumGPT2Model`` to ``models/GPT2_arch.py`` after ``AccustumGPT2Model``: the same
  ``accustum_forward``/``forward`` contract, implemented by ``PowerformerGPT2Model`` (no ``GPT2Block``);
- wraps the time branch's ``AccustumGPT2Model.from_pretrained(...)`` in
  ``PowerformerAccustumGPT2Model.from_gpt2(..., alpha=getattr(configs, 'powerformer_alpha', A),
  decay=getattr(configs, 'powerformer_decay', D))``, which copies every weight; the text branch is untouched;
- imports ``get_peft_model`` in ``models/CALF.py`` (upstream calls it without importing it);
- adds ``--powerformer_alpha`` and ``--powerformer_decay`` to ``run.py`` after ``--gpt_layers``, appends them to
  its ``setting`` string (``..._wcmha-<decay>-<alpha>``: the checkpoint folder and result lines, so that a sweep's
  runs do not overwrite each other) and prints them after ``print_args(args)``.

Reproducible under a seed: ``from_gpt2`` draws no random numbers, so a model built under ``run.py``'s seed has
the unpatched model's initial weights everywhere (LoRA adapters, projections, heads), and ``--powerformer_alpha 0``
is CALF's own run. A checkpoint whose decay alpha differs from the configured one wins, with a warning naming
both.

Options ``--alpha`` (default 1.0) and ``--decay`` (default powerlaw) become the defaults of the run.py flags and
of the ``getattr`` fallbacks.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, List, Mapping

from tsattn.injector.codemods import AddArgparseArgument, AddClass, AddImport, InsertStatements, WrapCall
from tsattn.injector.errors import UsageError
from tsattn.injector.recipe import Edit, Option, Recipe, register
from tsattn.injector.templates import MODULES, Template, template_constant

TEMPLATES = Path(__file__).resolve().parent / "calf_templates"
DECAY_TYPES = tuple(template_constant(MODULES / "wcmha.py", "DECAY_TYPES"))

ACCUSTUM_CLASS = '''
class PowerformerAccustumGPT2Model(PowerformerGPT2Model, AccustumGPT2Model):
    """AccustumGPT2Model whose blocks use Powerformer's weighted causal attention (added by tsattn-inject).

    Build it from a loaded GPT-2 with ``PowerformerAccustumGPT2Model.from_gpt2(gpt2, alpha, decay)``, which
    copies every weight. ``accustum_forward`` returns what ``AccustumGPT2Model.accustum_forward`` returns and
    ``forward`` returns (last hidden state, tuple of intermediate hidden states), as CALF expects.
    """

    def accustum_forward(self, input_ids=None, **kwargs):
        return PowerformerGPT2Model.forward(self, input_ids, **kwargs)

    def forward(self, input_ids=None, labels=None, **kwargs):
        outputs = self.accustum_forward(input_ids, **kwargs)
        return outputs.last_hidden_state, outputs.hidden_states
'''

TIME_BRANCH = (
    "PowerformerAccustumGPT2Model.from_gpt2({call}, alpha=getattr(configs, 'powerformer_alpha', {alpha}), "
    "decay=getattr(configs, 'powerformer_decay', {decay}))"
)


# run.py's experiment name (checkpoint folder, result lines), as upstream builds it in both of its branches
SETTING = """
setting = '{}_{}_{}_{}_ft{}_sl{}_ll{}_pl{}_dm{}_nh{}_el{}_dl{}_df{}_fc{}_eb{}_dt{}_{}_gpt{}_{}'.format(
    args.task_name, args.model_id, args.model, args.data, args.features, args.seq_len, args.label_len,
    args.pred_len, args.d_model, args.n_heads, args.e_layers, args.d_layers, args.d_ff, args.factor, args.embed,
    args.distil, args.des, args.gpt_layers, ii)
"""
SETTING_POWERFORMER = "setting += '_wcmha-{}-{}'.format(args.powerformer_decay, args.powerformer_alpha)\n"
# after run.py's print_args(args): the options in print_args' own layout
PRINT_POWERFORMER = (
    "print('\\033[1m' + 'Powerformer WCMHA (tsattn-inject)' + '\\033[0m')\n"
    "print('  {:<20}{:<20}{:<20}{:<20}'.format('Alpha:', args.powerformer_alpha, 'Decay:', args.powerformer_decay))\n"
    "print()\n"
)


def edits(options: Mapping[str, Any]) -> List[Edit]:
    alpha, decay = float(options["alpha"]), options["decay"]
    return [
        Edit("models/GPT2_arch.py", AddImport, module=".PowerformerGPT2", names=["PowerformerGPT2Model"]),
        Edit("models/GPT2_arch.py", AddClass, source=ACCUSTUM_CLASS, after="AccustumGPT2Model"),
        Edit("models/CALF.py", AddImport, module="peft", names=["get_peft_model"]),
        Edit("models/CALF.py", AddImport, module="models.GPT2_arch", names=["PowerformerAccustumGPT2Model"]),
        Edit("models/CALF.py", WrapCall, scope="Model.__init__", target="self.gpt2",
             callee="AccustumGPT2Model.from_pretrained", template=TIME_BRANCH,
             values={"alpha": alpha, "decay": decay}),
        Edit("run.py", AddArgparseArgument, flag="--powerformer_alpha", after="--gpt_layers", type="float",
             default=alpha, help="Powerformer WCMHA decay scale of the time branch (0: plain causal attention)"),
        Edit("run.py", AddArgparseArgument, flag="--powerformer_decay", after="--powerformer_alpha", type="str",
             default=decay, choices=DECAY_TYPES, help="Powerformer WCMHA decay of the time branch"),
        Edit("run.py", InsertStatements, scope="", after=SETTING, statements=SETTING_POWERFORMER),
        Edit("run.py", InsertStatements, scope="", after="print_args(args)", statements=PRINT_POWERFORMER),
    ]


def validate(options: Mapping[str, Any]) -> None:
    """The alpha ranges ``DecayBias`` accepts, checked here so that a bad value is refused before any edit
    (importing the template would import torch, which tsattn-inject does not need)."""
    alpha, decay = float(options["alpha"]), options["decay"]
    least = {"step": (1.0, "a step width >= 1"), "butterworth": (None, "a time scale > 0")}.get(decay, (0.0, ">= 0"))
    ok = math.isfinite(alpha) and (alpha > 0 if least[0] is None else alpha >= least[0])
    if not ok:
        raise UsageError(f"--alpha {alpha}: decay {decay!r} needs {least[1]}")


RECIPE = register(Recipe(
    kind="calf",
    feature="wcmha",
    description="Powerformer WCMHA in the time branch's GPT-2 (all weights copied); --powerformer_alpha/_decay",
    edits=edits,
    templates=(
        Template(MODULES / "wcmha.py", "models/PowerformerAttention.py"),
        Template(TEMPLATES / "PowerformerGPT2.py", "models/PowerformerGPT2.py"),
    ),
    options=(
        Option("alpha", float, 1.0, "decay scale (powerlaw: -alpha*log(dt+1); 0 = plain causal attention)"),
        Option("decay", str, "powerlaw", "decay type", choices=DECAY_TYPES),
    ),
    validate=validate,
    notes="needs nothing beyond CALF's requirements (torch, transformers, peft); runs with transformers 4.30 "
          "and 5.x; checkpoints of unpatched CALF load (the decay alpha is the only new state)",
))
