"""The injection steps of ``tsattn demo`` (the README's main job) run and check what they claim."""

from __future__ import annotations

import argparse

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
    assert demo.STEPS[-1][1] is demo.step_stream_hephaestus
