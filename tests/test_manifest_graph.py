"""A manifest that disagrees with its ONNX graph (inputs, outputs, dtypes, fixed dims, cache layout, max_context,
the task contract) or a file that is not a graph is refused at load with a ManifestError naming the field, and
tsattn-serve exits 3."""

from __future__ import annotations

import hashlib
import json

import pytest

from runtime_exports import cacheless_export, copy_export, reference_export
from tsattn.export.manifest import ManifestError
from tsattn.runtime import cli, load

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    return reference_export(tmp_path_factory.mktemp("mg") / "ref")[0]


def _edited(src, dst, edit):
    out = copy_export(src, dst)
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def _tensors(m, names=("inputs", "outputs")):
    for kind in names:
        yield from m["graphs"]["model"][kind]


def _set_heads(m, heads):
    m["cache"]["kv_heads"] = heads
    for t in _tensors(m):
        if t["name"].startswith(("past", "present")):
            t["shape"][1] = heads


def _set(path, value):
    def edit(m):
        node = m
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


def _rename_values(m):
    m["graphs"]["model"]["inputs"][0]["name"] = "x"
    m["task"]["inputs"][0]["name"] = "x"


def _horizon(m, h, shape=False):
    m["task"]["horizon"] = h
    if shape:
        m["graphs"]["model"]["outputs"][0]["shape"][2] = h


def _one_layer(m):
    m["cache"]["layers"] = 1
    keep = {"past_key_values.1.key", "past_key_values.1.value", "present.1.key", "present.1.value"}
    for kind in ("inputs", "outputs"):
        m["graphs"]["model"][kind] = [t for t in m["graphs"]["model"][kind] if t["name"] not in keep]


CASES = [
    ("kv_heads_in_the_cache_only", lambda m: _set(("cache", "kv_heads"), 3)(m), r"cache\.kv_heads: the cache says 3"),
    ("kv_heads_everywhere", lambda m: _set_heads(m, 3),
     r"graphs\.model\.inputs\[past_key_values\.0\.key\]\.shape\[1\]: the manifest says 3, the ONNX graph has 2"),
    ("head_dim", lambda m: _set(("cache", "head_dim"), 4)(m), r"cache\.head_dim: the cache says 4"),
    ("max_context_smaller", lambda m: _set(("cache", "max_context"), 8)(m),
     r"cache\.max_context: the cache says 8 .* keeps 9"),
    ("max_context_larger", lambda m: _set(("cache", "max_context"), 32)(m),
     r"cache\.max_context: the cache says 32 .* keeps 16"),
    ("cache_dtype", lambda m: _set(("cache", "dtype"), "float16")(m), r"cache\.dtype: the cache says float16"),
    ("layers", _one_layer, r"graphs\.model\.inputs: the ONNX graph has inputs \['past_key_values\.1\.key'"),
    ("input_dtype", lambda m: _set(("graphs", "model", "inputs", 0, "dtype"), "float64")(m),
     r"graphs\.model\.inputs\[values\]\.dtype: the manifest says float64, the ONNX graph has float32"),
    ("input_name", _rename_values, r"graphs\.model\.inputs: \['x'\] are not inputs of the ONNX graph"),
    ("rank", lambda m: _set(("graphs", "model", "outputs", 0, "shape"), ["batch", "seq"])(m),
     r"outputs\[forecast\]\.shape: the manifest says \['batch', 'seq'\] \(2 dims\)"),
    ("symbolic_but_fixed", lambda m: _set(("graphs", "model", "outputs", 0, "shape", 2), "h")(m),
     r"outputs\[forecast\]\.shape\[2\]: the manifest says 'h' \(any size\), the ONNX graph fixes it to 5"),
    ("horizon", lambda m: _horizon(m, 7), r"task\.horizon: the task says 7, but output 'forecast' has shape"),
    ("horizon_and_shape", lambda m: _horizon(m, 7, shape=True),
     r"outputs\[forecast\]\.shape\[2\]: the manifest says 7, the ONNX graph has 5"),
    ("task_input", lambda m: _set(("task", "inputs", 0, "name"), "nope")(m),
     r"task input 'nope' is not an input of graph 'model'"),
    ("time_dim", lambda m: _set(("task", "time_dim"), "time")(m),
     r"task input 'values': axis 1 of its shape \['batch', 'seq'\] is not the time dim 'time'"),
]


@pytest.mark.parametrize("name,edit,match", CASES, ids=[c[0] for c in CASES])
def test_a_manifest_that_disagrees_with_its_graph_is_refused_naming_the_field(ref, tmp_path, name, edit, match):
    out = _edited(ref, tmp_path / name, edit)
    with pytest.raises(ManifestError, match=match):
        load(out, device="cpu")


def test_the_untouched_exports_load(ref, tmp_path):
    load(ref, device="cpu").shutdown()
    window, _ = cacheless_export(tmp_path / "window")
    load(window, device="cpu").shutdown()
    bad = _edited(window, tmp_path / "ctx", _set(("task", "client", "context"), 15))
    with pytest.raises(ManifestError, match=r"task\.client\.context: the task says 15"):
        load(bad, device="cpu")


def test_a_file_that_is_not_a_graph_is_refused_and_serve_exits_3(ref, tmp_path, capsys):
    out = copy_export(ref, tmp_path / "garbage")
    data = b"this is not an ONNX model\n" * 100
    (out / "model.onnx").write_bytes(data)
    manifest = json.loads((out / "manifest.json").read_text())
    entry = next(f for f in manifest["files"] if f["path"] == "model.onnx")
    entry["bytes"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()  # a consistent lie
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"graphs\.model\.files\.onnx: .*model\.onnx is not a valid ONNX graph"):
        load(out, device="cpu")
    assert cli.main([str(out), "--device", "cpu", "--port", "0"]) == cli.EXIT_EXPORT
    err = capsys.readouterr().err
    assert "export refused" in err and "not a valid ONNX graph" in err and "Traceback" not in err
    lied = _edited(ref, tmp_path / "lied", _set(("cache", "kv_heads"), 3))
    assert cli.main([str(lied), "--device", "cpu", "--port", "0"]) == cli.EXIT_EXPORT
    assert "export refused: cache.kv_heads" in capsys.readouterr().err
