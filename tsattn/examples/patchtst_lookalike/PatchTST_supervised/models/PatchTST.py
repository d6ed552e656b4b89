# Look-alike of the forecasting model (tsattn test fixture; not upstream code).
__all__ = ['PatchTST']

from typing import Optional

from torch import nn

from layers.PatchTST_backbone import PatchTST_backbone
from layers.PatchTST_layers import series_decomp


class Model(nn.Module):
    def __init__(self, configs, norm: str = 'BatchNorm', attn_dropout: float = 0., act: str = 'gelu',
                 res_attention: bool = True, pe: str = 'zeros', learn_pe: bool = True, **kwargs):
        super().__init__()
        c_in = configs.enc_in
        context_window = configs.seq_len
        target_window = configs.pred_len
        n_layers = configs.e_layers
        n_heads = configs.n_heads
        d_model = configs.d_model
        d_ff = configs.d_ff
        dropout = configs.dropout
        head_dropout = configs.head_dropout
        patch_len = configs.patch_len
        stride = configs.stride
        padding_patch = configs.padding_patch
        revin = configs.revin
        decomposition = configs.decomposition
        kernel_size = configs.kernel_size

        self.decomposition = decomposition
        shared = dict(c_in=c_in, context_window=context_window, target_window=target_window, patch_len=patch_len,
                      stride=stride, n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_ff=d_ff, norm=norm,
                      attn_dropout=attn_dropout, dropout=dropout, act=act, res_attention=res_attention, pe=pe,
                      learn_pe=learn_pe, head_dropout=head_dropout, padding_patch=padding_patch, revin=revin)
        if self.decomposition:
            self.decomp_module = series_decomp(kernel_size)
            self.model_trend = PatchTST_backbone(**shared, **kwargs)
            self.model_res = PatchTST_backbone(**shared, **kwargs)
        else:
            self.model = PatchTST_backbone(**shared, **kwargs)

    def forward(self, x):                      # x: [batch, time, channels]
        if self.decomposition:
            res, trend = self.decomp_module(x)
            x = self.model_res(res.permute(0, 2, 1)) + self.model_trend(trend.permute(0, 2, 1))
        else:
            x = self.model(x.permute(0, 2, 1))
        return x.permute(0, 2, 1)              # [batch, pred_len, channels]
