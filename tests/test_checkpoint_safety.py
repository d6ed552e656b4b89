"""Checkpoints: every refused pickle names the classes and functions it would import (read from its opcodes, never
unpickled) and nothing suggests weights_only=False; a checkpoint's config is checked (plain data, bounded sizes,
types) before any model is built from it."""

from __future__ import annotations

import collections
import re

import numpy as np
import pytest
import torch

from tsattn.export import cli
from tsattn.export.checkpoint import CheckpointRefused, load_checkpoint, pickle_globals


class Pickled:
    """A custom class in a checkpoint: unpickling it would import this module."""


@pytest.mark.parametrize("obj,names", [
    (lambda: {"state_dict": {}, "extra": Pickled()}, ["test_checkpoint_safety.Pickled"]),
    (lambda: torch.nn.Linear(2, 2), ["torch.nn.modules.linear.Linear"]),
    (lambda: {"w": np.ones(2)}, ["numpy", "ndarray"]),
    (lambda: {"state_dict": {"w": torch.ones(1)}, "config": {"opt": collections.deque([1])}}, ["collections.deque"]),
])
def test_every_refused_pickle_names_what_it_would_import_and_never_suggests_unsafe_loading(tmp_path, obj, names):
    path = tmp_path / "c.pt"
    torch.save(obj(), path)
    with pytest.raises(CheckpointRefused) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "needs arbitrary unpickling" in message and all(n in message for n in names), message
    assert "weights_only=False" not in message and "`False`" not in message
    assert "torch.load(weights_only=True) only" in message and "state_dict()" in message


def test_pickle_globals_reads_opcodes_without_unpickling():
    import pickle

    data = pickle.dumps({"a": Pickled(), "b": collections.OrderedDict()}, protocol=2)
    assert pickle_globals(data) == ["test_checkpoint_safety.Pickled", "collections.OrderedDict"]
    data4 = pickle.dumps([Pickled(), Pickled()], protocol=4)
    assert pickle_globals(data4) == ["test_checkpoint_safety.Pickled"]


def test_a_checkpoint_config_of_absurd_size_is_refused_before_any_model_is_built(tmp_path, capsys, monkeypatch):
    from tsattn.models import reference

    built = []

    def refuse_to_build(self, *args, **kwargs):
        built.append(1)
        raise AssertionError("a model was built")

    monkeypatch.setattr(reference.ReferenceForecaster, "__init__", refuse_to_build)
    for config, match in (({"n_layers": 10**9}, r"config\.n_layers = 1000000000 is out of range"),
                          ({"n_layers": 100_000}, r"n_layers=100000 is more than 512"),
                          ({"d_model": 16384, "n_layers": 512}, "parameters, more than"),
                          ({"d_model": "128"}, "d_model must be a positive integer"),
                          ({"horizon": float("nan")}, "not a finite number"),
                          ({"extra": {"a": {"b": {"c": {"d": {"e": {"f": {}}}}}}}}, "nests deeper")):
        path = tmp_path / "big.pt"
        torch.save({"state_dict": {"w": torch.ones(1)}, "config": config}, path)
        rc = cli.main(["--model", "reference", "--out", str(tmp_path / "o"), "--checkpoint", str(path)])
        err = capsys.readouterr().err
        assert rc == cli.EXIT_CHECKPOINT and re.search(match, err), (config, err)
        assert "Traceback" not in err and "MemoryError" not in err
    assert built == [] and not (tmp_path / "o").exists()
