"""Bundled examples: look-alikes of the target repositories, for the tests and ``tsattn demo``.

``calf_lookalike/`` holds a few files of our own with the structure of Hank0626/CALF that the ``calf`` recipes
edit (see its README); ``wave_transformer_lookalike/`` does the same for Maximilian-Winter/Wave-Transformer (and
``wave_transformer_lookalike_head/`` overlays the ``core/transformer.py`` of its HEAD on it).
``lookalike_repo(name, dest, overlay=None)`` copies one (then the overlay's files over it) into a fresh git
repository with one commit;
``offline_gpt2()`` makes ``GPT2Model.from_pretrained`` (and so CALF's ``AccustumGPT2Model.from_pretrained``) build a
small GPT-2 from ``GPT2Config`` with seeded random weights, so that nothing is downloaded; ``import_from(root,
name)`` imports a module of such a repository without leaving it in ``sys.modules``; ``imports_from(*roots)`` does
the same for several modules (and Python files) that must share one copy of their package.
"""

from __future__ import annotations

import contextlib
import importlib
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

EXAMPLES = Path(__file__).resolve().parent
CALF_LOOKALIKE = EXAMPLES / "calf_lookalike"
WAVE_LOOKALIKE = EXAMPLES / "wave_transformer_lookalike"

TINY_GPT2 = dict(n_layer=3, n_embd=32, n_head=4, n_positions=64, vocab_size=64, bos_token_id=0, eos_token_id=0)
"""The GPT-2 size ``offline_gpt2`` builds by default: a few thousand parameters, built in milliseconds."""


def lookalike_repo(name: str, dest: Path, overlay: Optional[str] = None) -> Path:
    """Copy the look-alike ``name`` (e.g. ``"calf_lookalike"``) to ``dest``, then the files of the look-alike
    ``overlay`` over it (e.g. ``"wave_transformer_lookalike_head"``), and commit it in a new git repository."""
    import git

    sources = [EXAMPLES / n for n in (name, overlay) if n is not None]
    for source in sources:
        if not source.is_dir():
            have = ", ".join(p.name for p in EXAMPLES.iterdir() if p.is_dir() and not p.name.startswith("_"))
            raise ValueError(f"no bundled look-alike {source.name!r} (have: {have})")
    dest = Path(dest)
    for i, source in enumerate(sources):
        shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=i > 0)
    repo = git.Repo.init(dest)
    repo.index.add([str(p.relative_to(dest)) for p in sorted(dest.rglob("*")) if p.is_file() and ".git" not in p.parts])
    actor = git.Actor("tsattn", "tsattn@example.invalid")
    label = name if overlay is None else f"{name} + {overlay}"
    repo.index.commit(f"{label}: look-alike of the upstream repository", author=actor, committer=actor)
    return dest


@contextlib.contextmanager
def offline_gpt2(seed: int = 0, **config: Any) -> Iterator[None]:
    """Within the block, ``GPT2Model.from_pretrained(name, **kwargs)`` (and its subclasses') returns
    ``cls(GPT2Config(**TINY_GPT2, **config, **kwargs))`` in eval mode with weights drawn after
    ``torch.manual_seed(seed)``: every call gives the same weights, as loading one checkpoint twice does."""
    import torch
    from unittest import mock
    from transformers import GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2Model

    def from_pretrained(cls, name_or_path=None, *args, **kwargs):
        settings = {**TINY_GPT2, **config, **kwargs}
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            model = cls(GPT2Config(**settings))
        finally:
            torch.random.set_rng_state(state)
        return model.eval()

    with mock.patch.object(GPT2Model, "from_pretrained", classmethod(from_pretrained)):
        yield


def import_from(root: Path, name: str):
    """Import module ``name`` (e.g. ``"models.CALF"``) of the repository at ``root``, as if run from there, and
    remove it (and its package's other modules) from ``sys.modules`` again, so that another copy can be
    imported next."""
    top = name.split(".")[0]
    saved = {k: v for k, v in sys.modules.items() if k == top or k.startswith(top + ".")}
    for k in saved:
        del sys.modules[k]
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(root))
        for k in [k for k in sys.modules if k == top or k.startswith(top + ".")]:
            del sys.modules[k]
        sys.modules.update(saved)


@contextlib.contextmanager
def imports_from(*roots: Path) -> Iterator[Callable[[str], Any]]:
    """Within the block, ``load(name)`` imports module ``name`` (``"pkg.mod"``) or the Python file ``name``
    (``"path/to/file.py"``, relative to the first root or absolute) with ``roots`` first on ``sys.path``, so that
    every module loaded in the block shares one copy of its package. Afterwards every module the block added from
    under ``roots`` leaves ``sys.modules`` again, and modules it shadowed come back (as ``import_from``)."""
    import importlib.util

    roots = tuple(Path(r).resolve() for r in roots)
    before = set(sys.modules)
    shadowed: dict = {}
    owned: set = set()

    def own(top: str) -> None:
        if top in owned:
            return
        owned.add(top)
        # only what was there before the block is shadowed (and comes back); a package that an earlier load of
        # the block imported (models.X importing layers.Y, then load("layers.Z")) is the block's own and stays
        for k in [k for k in sys.modules if (k == top or k.startswith(top + ".")) and k in before]:
            shadowed[k] = sys.modules.pop(k)

    def load(name: str) -> Any:
        if name.endswith(".py"):
            path = Path(name)
            path = (path if path.is_absolute() else roots[0] / path).resolve()
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such Python file")
            module_name = f"_tsattn_user_{path.stem}_{abs(hash(str(path))):x}"
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
            return module
        own(name.split(".")[0])
        return importlib.import_module(name)

    for root in reversed(roots):
        sys.path.insert(0, str(root))
    try:
        yield load
    finally:
        for root in roots:
            sys.path.remove(str(root))
        for k in [k for k in sys.modules if k not in before]:
            top = k.split(".")[0]
            file = getattr(sys.modules[k], "__file__", None) or ""
            if top in owned or k.startswith("_tsattn_user_") or any(
                    Path(file).resolve().is_relative_to(r) for r in roots if file):
                del sys.modules[k]
        for top in owned:
            for k in [k for k in sys.modules if k == top or k.startswith(top + ".")]:
                del sys.modules[k]
        sys.modules.update(shadowed)
