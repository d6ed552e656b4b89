"""A CALF look-alike for tsattn's tests and demo: the structure tsattn-inject's ``calf`` recipes rely on, in a
few lines of our own (not upstream code).

Like upstream, ``Model`` builds a time branch ``self.gpt2`` and a text branch ``self.gpt2_text`` with
``AccustumGPT2Model.from_pretrained('gpt2', ...)``, keeps ``configs.gpt_layers`` blocks, wraps the time branch
in peft's LoRA on ``c_attn`` with ``get_peft_model``, which (also like upstream) is not imported, and forecasts
from variate tokens (B, M, d_model). The text branch's tokens attend over word embeddings in ``in_layer``
(``Encoder_PCA``), which, like upstream's, caches its word embedding repeated to the batch on the module (an
exporter trap that ``tsattn.export.calf`` handles). To build it offline, patch ``from_pretrained`` with
``tsattn.examples.offline_gpt2()``.
"""
import torch
import torch.nn as nn
from einops import rearrange
from peft import LoraConfig, TaskType
from models.GPT2_arch import AccustumGPT2Model


class Encoder_PCA(nn.Module):
    """Text tokens: each token attends over word embeddings (upstream: the PCA of GPT-2's, from
    configs.word_embedding_path; here a fixed (d_model, 16) matrix). As upstream, the word embedding is a plain
    attribute that forward replaces by its copy repeated to the batch, and repeats again when the batch changes."""

    def __init__(self, word_embedding):
        super(Encoder_PCA, self).__init__()
        self.word_embedding = word_embedding.T

    def forward(self, x):
        # x: (B, M, d_model) -> (x, text tokens (B, M, d_model))
        B = x.shape[0]
        if self.word_embedding.ndim == 2:
            self.word_embedding = self.word_embedding.repeat(B, 1, 1)
        elif self.word_embedding.shape[0] != B:
            self.word_embedding = self.word_embedding[0].repeat(B, 1, 1)
        weights = torch.softmax(x @ self.word_embedding.transpose(1, 2), dim=-1)
        return x, weights @ self.word_embedding


class Model(nn.Module):
    def __init__(self, configs, device):
        super(Model, self).__init__()
        self.pred_len = configs.pred_len
        peft_config = LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            inference_mode=False,
            r=configs.r,
            lora_alpha=configs.lora_alpha,
            lora_dropout=configs.lora_dropout,
            target_modules=["c_attn"]
        )

        self.gpt2 = AccustumGPT2Model.from_pretrained('gpt2', output_attentions=True, output_hidden_states=True)
        self.gpt2_text = AccustumGPT2Model.from_pretrained('gpt2', output_attentions=True, output_hidden_states=True)

        self.gpt2.h = self.gpt2.h[:configs.gpt_layers]
        self.gpt2_text.h = self.gpt2_text.h[:configs.gpt_layers]
        self.gpt2 = get_peft_model(self.gpt2, peft_config)

        self.time_in = nn.Linear(configs.seq_len, configs.d_model)
        self.text_in = nn.Linear(configs.seq_len, configs.d_model)
        word_embedding = torch.randn(configs.d_model, 16, generator=torch.Generator().manual_seed(0))
        self.in_layer = Encoder_PCA(word_embedding)
        self.out_layer = nn.Linear(configs.d_model, configs.pred_len)
        self.to(device)

    def forecast(self, x):
        # x: (B, L, M) -> outputs (B, pred_len, M)
        means = x.mean(1, keepdim=True).detach()
        stdev = torch.sqrt(torch.var(x - means, dim=1, keepdim=True, unbiased=False) + 1e-5).detach()
        x = rearrange((x - means) / stdev, 'b l m -> b m l')

        tokens_time = self.time_in(x)
        _, tokens_text = self.in_layer(self.text_in(x))
        outputs_time, intermidiate_time = self.gpt2(inputs_embeds=tokens_time)
        outputs_text, intermidiate_text = self.gpt2_text(inputs_embeds=tokens_text)

        outputs_time = rearrange(self.out_layer(outputs_time + tokens_time), 'b m l -> b l m')
        outputs_text = rearrange(self.out_layer(outputs_text + tokens_text), 'b m l -> b l m')
        return {
            'outputs_text': outputs_text * stdev + means,
            'outputs_time': outputs_time * stdev + means,
            'intermidiate_time': intermidiate_time,
            'intermidiate_text': intermidiate_text,
        }

    def forward(self, x, mask=None):
        return self.forecast(x)
