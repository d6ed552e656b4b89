"""Look-alike (anchors only): shared attention over patches and over channels, each built with a mask flag."""
import torch.nn as nn
from layers.SelfAttention_Family import AttentionLayer, FullAttention


class Model(nn.Module):
    def __init__(self, configs):
        super(Model, self).__init__()
        self.mask = True
        self.shared_MHA = nn.ModuleList(
            [AttentionLayer(FullAttention(mask_flag=self.mask), d_model=configs.d_model, n_heads=configs.n_heads)
             for _ in range(configs.e_layers)]
        )
        self.shared_MHA_ch = nn.ModuleList(
            [AttentionLayer(FullAttention(mask_flag=self.mask), d_model=configs.d_model, n_heads=configs.n_heads)
             for _ in range(configs.e_layers)]
        )
