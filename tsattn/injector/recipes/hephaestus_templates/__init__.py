"""Templates of the Hephaestus recipes: ``efficient_transformer.py``, copied into ``hephaestus/timeseries_models/``
of a Hephaestus clone beside the generic ``efficient_attention.py`` and ``wcmha.py``. It imports the clone's own
``models.py`` (as patched by the recipe), so it is tested in the patched look-alike, not imported here."""
