"""Ready models built on tsattn.modules."""
