"""The libcst injection engine and its per-target recipes (``tsattn-inject``)."""
