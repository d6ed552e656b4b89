"""tsattn.examples: the helpers that load a look-alike or a clone's modules in tests and export specs."""

from __future__ import annotations

import sys

from tsattn.examples import imports_from


def test_a_package_imported_by_an_earlier_load_is_not_restored_after_the_block(tmp_path):
    (tmp_path / "models").mkdir(); (tmp_path / "layers").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("")
    (tmp_path / "layers" / "__init__.py").write_text("")
    (tmp_path / "layers" / "a.py").write_text("X = 1\n")
    (tmp_path / "layers" / "b.py").write_text("Y = 2\n")
    (tmp_path / "models" / "m.py").write_text("from layers.a import X\n")
    with imports_from(tmp_path) as load:
        assert load("models.m").X == 1
        assert load("layers.b").Y == 2
    assert not [k for k in sys.modules if k.split(".")[0] in ("models", "layers")]
