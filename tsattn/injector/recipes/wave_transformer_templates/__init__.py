"""Templates of the ``wave_transformer`` recipes (installed into the target, not imported as recipes)."""
