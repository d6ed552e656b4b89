from .training import TabularDecoder  # noqa: F401
