"""The injection steps of ``tsattn demo`` (the README's main job) run and check what they claim."""

from __future__ import annotations

import argparse

import pytest

from tsattn import demo


def test_injection_steps_come_first_and_pass():
    titles = [title for title, _ in demo.STEPS]
    assert titles[0].startswith("tsattn-inject") and len(titles) >= 6
    args = argparse.Namespace(length=256)
    assert "run again: already applied" in demo.step_inject(args)
    assert "byte-identical" in demo.step_patch(args)
    assert "text branch bit-identical" in demo.step_calf_model(args)


def test_the_hephaestus_streaming_step_exports_and_streams():
    text = demo.step_stream_hephaestus(argparse.Namespace(length=256))
    assert "equal one stateless predict" in text and "refused (409), the stream unchanged at 202 steps" in text
    assert demo.step_stream_hephaestus in [fn for _, fn in demo.STEPS]


def _subset(monkeypatch, *fns):
    monkeypatch.setattr(demo, "STEPS", [(title, fn) for title, fn in demo.STEPS if fn in fns])


def test_out_keeps_what_the_demo_makes_and_lists_it_with_next_commands(tmp_path, monkeypatch, capfd):
    _subset(monkeypatch, demo.step_inject, demo.step_patch, demo.step_calf_model, demo.step_analysis)
    out = tmp_path / "demo-out"
    assert demo.main(["--out", str(out), "--length", "256"]) == 0
    stdout, stderr = capfd.readouterr()
    assert (out / "patches" / "calf-wcmha.patch").read_text().startswith("tsattn-inject ")
    assert (out / "CALF" / "models" / "PowerformerGPT2.py").is_file() and (out / "pristine" / "run.py").is_file()
    pngs = sorted(p.name for p in (out / "analysis").glob("*.png"))
    assert pngs == ["attention_standard_L1_H0.png", "attention_wcmha_L1_H0.png"]
    assert all((out / "analysis" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    listing = stdout[stdout.index(f"demo: kept in {out.resolve()}:"):]
    for name in ("CALF/", "patches/", "calf-wcmha.patch", "analysis/", "attention_wcmha_L1_H0.png"):
        assert name in listing
    assert f"tsattn-export --target {out.resolve() / 'CALF'} --feature wcmha" in listing
    assert f"tsattn-inject --target {out.resolve() / 'CALF'} --status" in listing
    # third-party warnings (peft, transformers) stay out; no progress line when stderr is not a terminal
    assert "Warning" not in stdout + stderr and "\r" not in stderr


def test_out_must_be_new_or_empty(tmp_path, capsys):
    (tmp_path / "x").write_text("")
    with pytest.raises(SystemExit) as exc:
        demo.main(["--out", str(tmp_path)])
    assert exc.value.code == 2 and "not empty" in capsys.readouterr().err


def test_without_out_the_demo_says_its_folder_is_temporary(monkeypatch, capsys):
    _subset(monkeypatch, demo.step_reference)
    assert demo.main([]) == 0
    assert "temporary folder, removed now; `tsattn demo --out DIR` keeps it" in capsys.readouterr().out


def test_progress_goes_to_a_terminal_only(monkeypatch):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, shown in ((Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr("sys.stderr", stream)
        demo._progress("training wcmha: epoch 1/2")
        demo._progress("")
        assert (stream.getvalue() == "\r\033[K      ... training wcmha: epoch 1/2\r\033[K") is shown
        assert shown or stream.getvalue() == ""
