"""GPT-2 with CALF's calling convention (look-alike, written for tsattn's tests and demo; not upstream code).

Upstream CALF's ``AccustumGPT2Model`` re-implements ``GPT2Model.forward`` from transformers 4.30; here the same
contract delegates to the installed transformers, so that the look-alike runs with transformers 5.
"""
from transformers.generation import GenerationMixin
from transformers.models.gpt2.modeling_gpt2 import GPT2Model


class AccustumGPT2Model(GPT2Model, GenerationMixin):
    """``forward`` returns (last hidden state, hidden states: every block's input, then the final output)."""

    @classmethod
    def can_generate(cls):
        return False  # GenerationMixin only gives peft's CAUSAL_LM wrapper its prepare_inputs_for_generation

    def accustum_forward(self, input_ids=None, output_attentions=None, output_hidden_states=None, **kwargs):
        # None means the config's setting, as in upstream (transformers 5 reads an explicit None as False)
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        return GPT2Model.forward(self, input_ids, output_attentions=output_attentions,
                                 output_hidden_states=output_hidden_states, **kwargs)

    def forward(self, input_ids=None, labels=None, **kwargs):
        outputs = self.accustum_forward(input_ids, **kwargs)
        return outputs.last_hidden_state, outputs.hidden_states
