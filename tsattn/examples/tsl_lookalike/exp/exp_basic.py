import importlib


class Exp_Basic(object):
    """Builds ``models.<args.model>.Model(args)``, as the real one looks models up by file name."""

    def __init__(self, args):
        self.args = args
        self.model = importlib.import_module(f"models.{args.model}").Model(args)
