"""The README's examples run as written, and its table of contents lists every section.

Every ```python block runs on its own, in its own process, from the checkout's root (``python -c CODE``, the
checkout first on ``PYTHONPATH``), as a reader runs it after the README's set-up commands. A block that needs more
than the set-up gives starts with ``# needs: ...``:

    # needs: a GPU ...                      skipped, saying so (CI has none)
    # needs: a Triton server ...            skipped, saying so
    # needs: a patched clone of T (tsattn-inject --feature F[, commit, then --feature G]) ...
                                            run from the root of a patched copy of T's look-alike
                                            (tsattn/examples/*_lookalike, injected with those features in order,
                                            committed between them), with its root and src/ importable
    # needs: a running server: tsattn-serve ... [--grpc-port 8001] ...
                                            run against a tsattn-serve process this module starts on free ports
                                            (a small reference export named "reference"), with localhost:8000 and
                                            localhost:8001 in the code pointed at its HTTP and gRPC ports
    # needs: the module M ...               skipped when M cannot be imported (a feature on another branch)

Any other need fails the test, so that no block is skipped silently.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TIMEOUT_S = 300  # per block; every block is small (the whole file runs in about two minutes of CPU)
LOOKALIKES = {"CALF": "calf_lookalike", "Hephaestus": "hephaestus_lookalike",
              "Wave-Transformer": "wave_transformer_lookalike"}
NEEDS = re.compile(r"^# needs: (.+)$")


class Block(NamedTuple):
    line: int  # the line of the opening fence
    lang: str
    code: str


def blocks(text: str) -> List[Block]:
    """Every fenced block: (line of its opening fence, its info string, its code)."""
    found, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if m:
            start, i, body = i + 1, i + 1, []
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            if i < len(lines) and lines[i].rstrip() != "```":
                raise AssertionError(f"README.md line {i + 1}: {lines[i]!r} closes the block opened at line {start}; "
                                     f"a closing fence is a bare ```")
            if i == len(lines):
                raise AssertionError(f"README.md: the block opened at line {start} is never closed")
            found.append(Block(start, m.group(1), "\n".join(body) + "\n"))
        i += 1
    return found


def headings(text: str) -> List[Tuple[int, str]]:
    """(level, text) of every ## and ### heading outside code fences."""
    out, fence = [], False
    for line in text.split("\n"):
        if line.startswith("```"):
            fence = not fence
        elif not fence:
            m = re.match(r"^(##|###) (.+)$", line)
            if m:
                out.append((len(m.group(1)), m.group(2).strip()))
    return out


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


TEXT = README.read_text(encoding="utf-8")
PYTHON = [b for b in blocks(TEXT) if b.lang == "python"]


def needs_of(block: Block) -> Optional[str]:
    m = NEEDS.match(block.code.split("\n", 1)[0])
    return m.group(1) if m else None


# ------------------------------------------------------------------------------------------ contents and links


def test_the_contents_list_every_section_in_order_with_its_anchor():
    text = TEXT.split("\n## Contents\n", 1)
    assert len(text) == 2, "README.md has no '## Contents' section"
    toc = text[1].split("\n## ", 1)[0]
    listed = re.findall(r"^( *)- \[(.+?)\]\(#([^)]+)\)$", toc, re.M)
    wanted = [(level, h) for level, h in headings(TEXT) if h != "Contents"]
    assert [h for _, h, _ in listed] == [h for _, h in wanted], "the contents and the headings differ"
    for (indent, title, target), (level, _) in zip(listed, wanted):
        assert target == anchor(title), f"contents entry {title!r} links #{target}, its anchor is #{anchor(title)}"
        assert len(indent) == (0 if level == 2 else 2), f"contents entry {title!r} is not indented as a level {level}"
    anchors = [anchor(h) for _, h in headings(TEXT)]
    assert len(set(anchors)) == len(anchors), "two headings have the same anchor"


def test_every_link_inside_the_readme_points_at_a_heading():
    anchors = {anchor(h) for _, h in headings(TEXT)}
    prose = re.sub(r"^```.*?^```", "", TEXT, flags=re.S | re.M)
    broken = sorted({t for t in re.findall(r"\]\(#([^)]+)\)", prose) if t not in anchors})
    assert not broken, f"links to no heading: {broken}"


def test_the_ci_test_command_is_where_ci_run_reads_it():
    """.ci/run runs the line after the `<!-- test-command -->` marker's fence: it must be there and be pytest."""
    after = TEXT.split("<!-- test-command -->\n", 1)
    assert len(after) == 2
    lines = after[1].split("\n")
    assert lines[0] == "```bash" and lines[2] == "```", lines[:3]
    assert lines[1].startswith("python3 -m pytest")


def test_every_python_block_that_needs_more_says_what_in_a_form_this_test_knows():
    known = ("a GPU", "a Triton server", "a patched clone of ", "a running server", "the module ")
    for block in PYTHON:
        need = needs_of(block)
        assert need is None or need.startswith(known), f"README line {block.line}: unknown need {need!r}"
        assert "# needs:" not in block.code.split("\n", 1)[1], f"README line {block.line}: '# needs:' not first"


# ------------------------------------------------------------------------------------------ running the blocks


def _git(repo: Path, *args: str) -> None:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.invalid")
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)


_CLONES: Dict[Tuple[str, Tuple[str, ...]], Path] = {}


def patched_clone(need: str, tmp_path_factory) -> Path:
    """The patched look-alike a '# needs: a patched clone of T (... --feature F ...)' line asks for."""
    m = re.match(r"a patched clone of (\S+) \((.*?)\)", need)
    assert m, f"cannot read the target and features of {need!r}"
    target, features = m.group(1), tuple(re.findall(r"--feature (\w+)", m.group(2)))
    assert target in LOOKALIKES, f"no look-alike for {target!r}; known: {sorted(LOOKALIKES)}"
    assert features, f"no --feature in {need!r}"
    key = (target, features)
    if key not in _CLONES:
        from tsattn.examples import lookalike_repo
        from tsattn.injector import engine

        root = tmp_path_factory.mktemp(f"readme-{target}")
        repo = lookalike_repo(LOOKALIKES[target], root / target)
        for feature in features:
            engine.inject(repo, feature, patch_out=root / f"{feature}.patch")
            _git(repo, "add", "-A")
            _git(repo, "commit", "-qm", f"tsattn: {feature}")
        _CLONES[key] = repo
    return _CLONES[key]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tsattn-serve process (HTTP and gRPC on free ports) serving a small reference export named reference."""
    from servers import tsattn_serve
    from tsattn.export.exporter import export
    from tsattn.export.models import MODELS

    out = tmp_path_factory.mktemp("readme-serve") / "reference"
    export(MODELS["reference"].build({"d_model": 32, "n_layers": 2, "n_heads": 2}, None, 0), out, exporter="legacy",
           formats=["onnx"])
    with tsattn_serve(out, "--grpc-port", "0") as addresses:
        yield addresses


def run_block(block: Block, cwd: Path, pythonpath: List[Path], tmp: Path) -> None:
    """``python -c`` the block in ``cwd``; its temporary files (the examples' exports) go under ``tmp``."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", MPLBACKEND="Agg",
               TMPDIR=str(tmp),
               PYTHONPATH=os.pathsep.join([str(p) for p in pythonpath] + [os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", block.code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert proc.returncode == 0, (f"README.md line {block.line}: the python block exits {proc.returncode}\n"
                                  f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-6000:]}")


@pytest.mark.parametrize("block", PYTHON, ids=[f"line{b.line}" for b in PYTHON])
def test_python_block_runs_as_written(block, request, tmp_path, tmp_path_factory):
    need = needs_of(block)
    cwd, path = ROOT, [ROOT]
    if need is None:
        pass
    elif need.startswith(("a GPU", "a Triton server")):
        pytest.skip(f"README line {block.line} needs {need}")
    elif need.startswith("the module "):
        module = need.split()[2]
        if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
            pytest.skip(f"README line {block.line} needs {module}, which is not on this branch")
    elif need.startswith("a patched clone of "):
        cwd = patched_clone(need, tmp_path_factory)
        path = [ROOT, cwd, cwd / "src"]
    elif need.startswith("a running server"):
        addresses = request.getfixturevalue("served")
        code = block.code.replace("localhost:8000", addresses.http)
        if "localhost:8001" in code:
            assert addresses.grpc, "the server did not report its gRPC port"
            code = code.replace("localhost:8001", addresses.grpc)
        block = block._replace(code=code)
    else:
        pytest.fail(f"README line {block.line}: unknown need {need!r}")
    run_block(block, cwd, path, tmp_path)


def test_the_readme_has_python_examples_and_runs_most_of_them_here():
    """Guard against a parser that finds nothing, or a README whose examples are all skipped."""
    needs = [needs_of(b) for b in PYTHON]
    assert len(PYTHON) >= 10
    assert sum(n is None or not n.startswith(("a GPU", "a Triton server", "the module ")) for n in needs) >= 10
