# tsattn-inject wave_transformer: the code the wave_transformer recipes insert into core/wave_transformer.py.
"""The code that the ``wave_transformer`` recipes insert into upstream's ``core/wave_transformer.py``
(``WaveTransformer``), kept as real Python so that it is imported and tested like the other templates.

The recipe (``wave_transformer_enhancements.py``) reads it as text with ``template_code`` (nothing here is
imported by ``tsattn-inject``):

- each module-level function below stands for the statements one codemod inserts (``InsertStatements``):
  its body is what is inserted, its parameters are the names those statements use at their place in
  ``WaveTransformer.__init__``, ``forward`` or ``save`` (so that they can be run here on their own);
- the methods of ``WaveTransformer`` below are added to upstream's class as they are (``AddMethod``).

The modules the statements build are the installed templates' (``wave_transformer.tsattn_modules.X`` in the
target, ``tsattn.modules.X`` here).
"""

from tsattn.modules.wave_ahs import AdaptiveHarmonicSelector
from tsattn.modules.wave_fcl import FrequencyMask
from tsattn.modules.wave_mrwp import MultiResolutionWavePyramid

# --- every feature: max_seq_len saved (upstream's save() omits it) ----------------------------------------------

# WaveTransformer.__init__, after ``self.use_flash = use_flash``
def init_max_seq_len(self, max_seq_len):
    self.max_seq_len = max_seq_len


# WaveTransformer.save, after ``checkpoint = {...}``
def save_max_seq_len(self, config):
    if self.max_seq_len != 512:  # (tsattn-inject) upstream's save() omits it; load() needs it
        config['max_seq_len'] = self.max_seq_len


# --- AHS -----------------------------------------------------------------------------------------------------------

# WaveTransformer.__init__
def init_ahs(self, num_harmonics, use_ahs, ahs_k_ratio, ahs_dynamic_k, ahs_temperature):
    # Adaptive Harmonic Sparsification (tsattn-inject): keep the most important harmonics at each position
    self.use_ahs = use_ahs
    self.ahs_k_ratio = ahs_k_ratio
    self.ahs_dynamic_k = ahs_dynamic_k
    self.ahs_temperature = ahs_temperature
    self.ahs = (AdaptiveHarmonicSelector(num_harmonics, self.input_dim, k_ratio=ahs_k_ratio,
                                         temperature=ahs_temperature, use_dynamic_k=ahs_dynamic_k)
                if use_ahs else None)


# WaveTransformer.forward, after ``x = wave.to_representation()`` (and FCL's mask)
def forward_ahs(self, x, return_ahs_stats):
    x, ahs_stats = self.harmonic_selection(x, return_ahs_stats)


# WaveTransformer.forward, after the decoder's call
def forward_ahs_stats(output, wave, ahs_stats, return_ahs_stats, return_encoder_outputs):
    if return_ahs_stats:
        return (output, wave, ahs_stats) if return_encoder_outputs else (output, ahs_stats)


# WaveTransformer.save
def save_ahs(self, config):
    if self.use_ahs:
        config.update(use_ahs=True, ahs_k_ratio=self.ahs_k_ratio, ahs_dynamic_k=self.ahs_dynamic_k,
                      ahs_temperature=self.ahs_temperature)


# --- FCL -----------------------------------------------------------------------------------------------------------

# WaveTransformer.__init__
def init_fcl(self, num_harmonics, use_fcl, fcl_mask_slope):
    # Frequency Curriculum Learning (tsattn-inject): mask the harmonics above forward's freq_limit while training
    self.use_fcl = use_fcl
    self.fcl_mask_slope = fcl_mask_slope
    self.freq_mask = FrequencyMask(num_harmonics, mask_slope=fcl_mask_slope) if use_fcl else None


# WaveTransformer.forward, after ``x = wave.to_representation()``
def forward_fcl(self, x, freq_limit):
    x = self.frequency_curriculum(x, freq_limit)


# WaveTransformer.save
def save_fcl(self, config):
    if self.use_fcl:
        config.update(use_fcl=True, fcl_mask_slope=self.fcl_mask_slope)


# --- PCCA (the blocks' attention: transformer_code.py) -------------------------------------------------------------

# WaveTransformer.__init__
def init_pcca(self, use_pcca, pcca_mode, pcca_phase_temp):
    # Phase-Coherent Attention (tsattn-inject) in the blocks instead of MultiQueryFlashAttention
    self.use_pcca = use_pcca
    self.pcca_mode = pcca_mode
    self.pcca_phase_temp = pcca_phase_temp


# WaveTransformer.save
def save_pcca(self, config):
    if self.use_pcca:
        config.update(use_pcca=True, pcca_mode=self.pcca_mode, pcca_phase_temp=self.pcca_phase_temp)


# --- MRWP ----------------------------------------------------------------------------------------------------------

# WaveTransformer.__init__
def init_mrwp(self, num_harmonics, use_mrwp, pyramid_interval, mrwp_band_boundaries, mrwp_band_num_layers,
              mrwp_cross_band, transformer_num_layers, transformer_num_heads, transformer_heads_kv,
              transformer_d_ff_multi, dropout, use_flash):
    # Multi-Resolution Wave Pyramid (tsattn-inject): one pyramid, run after every pyramid_interval-th block
    self.use_mrwp = use_mrwp
    self.pyramid_interval = pyramid_interval
    self.mrwp_band_boundaries = list(mrwp_band_boundaries)
    self.mrwp_band_num_layers = None if mrwp_band_num_layers is None else list(mrwp_band_num_layers)
    self.mrwp_cross_band = mrwp_cross_band
    self.pyramid = None
    if use_mrwp:
        if int(pyramid_interval) != pyramid_interval or not 1 <= pyramid_interval <= transformer_num_layers:
            raise ValueError(f"pyramid_interval must be an integer in [1, transformer_num_layers="
                             f"{transformer_num_layers}]; got {pyramid_interval!r}")
        self.pyramid = MultiResolutionWavePyramid(
            num_harmonics, band_boundaries=self.mrwp_band_boundaries, band_num_layers=self.mrwp_band_num_layers,
            n_heads_q=transformer_num_heads, n_heads_kv=transformer_heads_kv, d_ff_multi=transformer_d_ff_multi,
            dropout=dropout, use_cross_band_attn=mrwp_cross_band, use_flash=use_flash)


# WaveTransformer.forward, after each block's call
def forward_mrwp(self, x, i, causal, attention_mask):
    if self.pyramid is not None and (i + 1) % self.pyramid_interval == 0:
        x = self.pyramid(x, causal=causal, attention_mask=attention_mask)


# WaveTransformer.save
def save_mrwp(self, config):
    if self.use_mrwp:
        config.update(use_mrwp=True, pyramid_interval=self.pyramid_interval,
                      mrwp_band_boundaries=self.mrwp_band_boundaries,
                      mrwp_band_num_layers=self.mrwp_band_num_layers, mrwp_cross_band=self.mrwp_cross_band)


# --- WCMHA (the blocks' attention: transformer_code.py) ------------------------------------------------------------

# WaveTransformer.__init__
def init_wcmha(self, use_wcmha, wcmha_decay, wcmha_alpha, wcmha_cutoff):
    # WCMHA (tsattn-inject): Powerformer's decay bias in the blocks' attention
    self.use_wcmha = use_wcmha
    self.wcmha_decay = wcmha_decay
    self.wcmha_alpha = wcmha_alpha
    self.wcmha_cutoff = wcmha_cutoff


# WaveTransformer.save
def save_wcmha(self, config):
    if self.use_wcmha:
        config.update(use_wcmha=True, wcmha_decay=self.wcmha_decay, wcmha_alpha=self.wcmha_alpha,
                      wcmha_cutoff=self.wcmha_cutoff)


# --- methods added to WaveTransformer ---------------------------------------------------------------------------------


class WaveTransformer:
    """Stand-in for upstream's ``WaveTransformer``: only the methods the recipes add to it (after ``forward``)."""

    def harmonic_selection(self, x, return_stats=False):
        """(tsattn-inject) AHS on the wave representation x (B, S, 3H): (x, stats), stats None unless asked."""
        # Without use_ahs, x is returned as it is.
        if self.ahs is None:
            if return_stats:
                raise ValueError("return_ahs_stats=True needs a model built with use_ahs=True")
            return x, None
        if return_stats:
            return self.ahs(x, return_stats=True)
        return self.ahs(x), None

    def frequency_curriculum(self, x, freq_limit=None):
        """(tsattn-inject) FCL on the wave representation x (B, S, 3H), while training."""
        # The harmonics above freq_limit (a fraction of the spectrum, e.g. from
        # FrequencyCurriculumScheduler.get_freq_limit(step)) are rolled off; in eval, or without freq_limit, x is
        # returned as it is.
        if freq_limit is None:
            return x
        if self.freq_mask is None:
            raise ValueError("freq_limit needs a model built with use_fcl=True")
        return self.freq_mask(x, freq_limit) if self.training else x
