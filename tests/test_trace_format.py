"""Trace format v1: round trips, memory mapping, atomic saves, and every validation error on load."""

from __future__ import annotations

import io
import json
import math
import os
import time
import tracemalloc
import zipfile

import numpy as np
import numpy.lib.format as npf
import pytest

from soc.errors import TraceError
from soc.trace import FORMAT, Trace, TraceMeta, load_trace, save_trace, trace_info
from soc.trace import format as fmt

L, H, KV, T, D = 2, 4, 2, 16, 8


def _meta(**over):
    d = {"format": FORMAT, "model": "toy", "source": "synthetic", "causal": True, "layers": L, "heads": H,
         "kv_heads": KV, "seq_len": T, "head_dim": D, "note": {"nested": [1, 2]}}
    d.update(over)
    return d


def _arrays(dtype=np.float16, seed=0, seq_q=T):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((L, H, seq_q, D)).astype(dtype)
    k = rng.standard_normal((L, KV, T, D)).astype(dtype)
    v = rng.standard_normal((L, KV, T, D)).astype(dtype)
    return q, k, v


def _write_npz(path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _npy_bytes(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=True)
    return buf.getvalue()


def _npy_header_only(shape, descr="<f4", extra=b"\0" * 64) -> bytes:
    buf = io.BytesIO()
    npf.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue() + extra


def _members(q, k, v, meta: dict | str) -> dict[str, bytes]:
    text = meta if isinstance(meta, str) else json.dumps(meta)
    return {"q.npy": _npy_bytes(q), "k.npy": _npy_bytes(k), "v.npy": _npy_bytes(v),
            "meta.npy": _npy_bytes(np.array(text))}


# ------------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("suffix,dtype", [(".npz", np.float16), ("", np.float32), (".npz", np.float32)])
def test_round_trip_is_bit_exact(tmp_path, suffix, dtype):
    q, k, v = _arrays(dtype)
    path = save_trace(tmp_path / f"t{suffix}", q, k, v, _meta())
    tr = load_trace(path)
    for name, a in zip("qkv", (q, k, v), strict=True):
        b = getattr(tr, name)
        assert b.dtype == dtype and b.shape == a.shape
        assert a.tobytes() == b.tobytes()  # bit exact, float16 kept as float16
    assert tr.meta == TraceMeta.from_dict(_meta())
    assert tr.meta.to_dict()["note"] == {"nested": [1, 2]}  # unknown keys survive in `extra`
    assert tr.meta.scale == pytest.approx(1 / math.sqrt(D))
    assert tr.path == str(path)
    assert tr.nbytes() == q.nbytes + k.nbytes + v.nbytes


def test_meta_round_trip_and_defaults():
    m = TraceMeta.from_dict(_meta(scale=0.5, query_offset=3, text_sha256="a" * 64, tokens=16,
                                  source="capture", provenance="minilm weights", text="x.txt"))
    assert TraceMeta.from_dict(m.to_dict()) == m
    assert m.seq_q == T - 3 and m.expected_shapes()["q"] == (L, H, T - 3, D)
    assert TraceMeta(model="m", source="synthetic", causal=False, layers=1, heads=2, kv_heads=1, seq_len=4,
                     head_dim=16).scale == 0.25
    with pytest.raises(TraceError, match="extra"):
        TraceMeta(model="m", source="synthetic", causal=False, layers=1, heads=2, kv_heads=1, seq_len=4,
                  head_dim=16, extra={"layers": 3})


def test_decode_trace_has_fewer_queries(tmp_path):
    q, k, v = _arrays(seq_q=4)
    tr = load_trace(save_trace(tmp_path / "d.npz", q, k, v, _meta(query_offset=T - 4)))
    assert tr.seq_q == 4 and tr.meta.query_offset == T - 4
    with pytest.raises(TraceError, match=r"q: expected shape \(layers, heads, seq_len - query_offset, "
                                         r"head_dim\) = \(2, 4, 4, 8\), got \(2, 4, 16, 8\)"):
        save_trace(tmp_path / "bad.npz", *_arrays(), _meta(query_offset=T - 4))


def test_mmap_directory_and_stored_npz(tmp_path):
    q, k, v = _arrays(np.float32)
    for path in (save_trace(tmp_path / "dir", q, k, v, _meta()),
                 save_trace(tmp_path / "f.npz", q, k, v, _meta())):
        tr = load_trace(path, mmap=True, max_bytes=1)  # mapped bytes do not count against max_bytes
        assert isinstance(tr.k, np.memmap) and not tr.k.flags.writeable
        np.testing.assert_array_equal(tr.q, q)
        np.testing.assert_array_equal(tr.v, v)
        with pytest.raises(TraceError, match="max_bytes=1"):
            load_trace(path, max_bytes=1)


def test_trace_info_reads_headers_only(tmp_path):
    q, k, v = _arrays()
    for path in (save_trace(tmp_path / "f.npz", q, k, v, _meta()),
                 save_trace(tmp_path / "dir", q, k, v, _meta())):
        info = trace_info(path)
        files = [path] if path.is_file() else [path / n for n in ("q.npy", "k.npy", "v.npy", "meta.json")]
        assert info["file_bytes"] == sum(os.path.getsize(f) for f in files)
        assert info["memory_bytes"] == q.nbytes + k.nbytes + v.nbytes
        assert info["arrays"]["k"] == {"shape": [L, KV, T, D], "dtype": "float16", "bytes": k.nbytes}
        assert info["meta"]["model"] == "toy" and info["seq_q"] == T
        assert info["layout"] == ("npz" if path.suffix == ".npz" else "directory")


def test_trace_constructor_checks_shapes():
    q, k, v = _arrays()
    with pytest.raises(TraceError, match=r"<trace>: v: expected shape"):
        Trace(q=q, k=k, v=v[:, :, :3], meta=TraceMeta.from_dict(_meta()))


# ------------------------------------------------------------------------------------------ atomic save
def test_save_leaves_no_temporaries_and_replaces_only_on_success(tmp_path, monkeypatch):
    q, k, v = _arrays()
    target = save_trace(tmp_path / "t.npz", q, k, v, _meta())
    before = target.read_bytes()
    bad_k = k.copy()
    bad_k[0, 0, 0, 0] = np.nan
    with pytest.raises(TraceError, match="non-finite"):
        save_trace(target, q, bad_k, v, _meta())
    real_savez = np.savez

    def crash(fh, **arrays):
        real_savez(fh, q=arrays["q"])  # half written, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fmt.np, "savez", crash)
    with pytest.raises(TraceError, match="cannot write"):
        save_trace(target, *_arrays(seed=1), _meta())
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["t.npz"]
    with pytest.raises(TraceError, match="a trace exists"):
        save_trace(target, q, k, v, _meta(), overwrite=False)


def test_directory_save_is_atomic(tmp_path, monkeypatch):
    q, k, v = _arrays()
    target = save_trace(tmp_path / "dir", q, k, v, _meta())
    real_save = np.save
    calls = []

    def crash(fh, a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(5, "Input/output error")
        real_save(fh, a, **kw)

    monkeypatch.setattr(fmt.np, "save", crash)
    with pytest.raises(TraceError, match="cannot write"):
        save_trace(target, *_arrays(seed=1), _meta())
    monkeypatch.undo()
    np.testing.assert_array_equal(load_trace(target).q, q)  # the old trace is intact
    assert sorted(os.listdir(tmp_path)) == ["dir"]
    q2, k2, v2 = _arrays(seed=2)
    save_trace(target, q2, k2, v2, _meta())  # a successful save replaces it
    np.testing.assert_array_equal(load_trace(target).q, q2)
    assert sorted(os.listdir(tmp_path)) == ["dir"]


def test_directory_save_refuses_to_clobber_foreign_directories(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.json").write_text("{}")
    with pytest.raises(TraceError, match="non-trace files"):
        save_trace(tmp_path / "out", *_arrays(), _meta())
    assert (tmp_path / "out" / "report.json").exists()


# ------------------------------------------------------------------------------------------ bad files
def test_missing_path(tmp_path):
    with pytest.raises(TraceError, match="nope.npz: no such trace file or directory"):
        load_trace(tmp_path / "nope.npz")
    with pytest.raises(TraceError, match="no such trace"):
        trace_info(tmp_path / "nope")


def test_not_a_zip_and_truncated_zip(tmp_path):
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(TraceError, match="text.npz: not a valid .npz"):
        load_trace(tmp_path / "text.npz")
    path = save_trace(tmp_path / "t.npz", *_arrays(), _meta())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TraceError, match="not a valid .npz .*truncated or corrupt"):
        load_trace(path)


def test_corrupt_member_data_fails_crc(tmp_path):
    path = save_trace(tmp_path / "t.npz", *_arrays(np.float32), _meta())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("k.npy")
    data = bytearray(path.read_bytes())
    data[info.header_offset + 200] ^= 0x55  # inside k's array data (stored, uncompressed)
    path.write_bytes(bytes(data))
    with pytest.raises(TraceError, match="CRC"):
        load_trace(path)


def test_truncated_member_is_detected_from_its_header(tmp_path):
    q, k, v = _arrays()
    members = _members(q, k, v, _meta())
    members["v.npy"] = members["v.npy"][:-10]
    _write_npz(tmp_path / "t.npz", members)
    with pytest.raises(TraceError, match=r"v: header declares 1024 data bytes but 1014 are stored"):
        load_trace(tmp_path / "t.npz")


def test_missing_array_and_missing_meta(tmp_path):
    q, k, v = _arrays()
    members = _members(q, k, v, _meta())
    del members["v.npy"]
    _write_npz(tmp_path / "a.npz", members)
    with pytest.raises(TraceError, match="missing array 'v'"):
        load_trace(tmp_path / "a.npz")
    members = _members(q, k, v, _meta())
    del members["meta.npy"]
    _write_npz(tmp_path / "b.npz", members)
    with pytest.raises(TraceError, match="missing array 'meta'"):
        load_trace(tmp_path / "b.npz")
    d = save_trace(tmp_path / "dir", q, k, v, _meta())
    (d / "meta.json").unlink()
    with pytest.raises(TraceError, match="missing meta.json"):
        load_trace(d)


def test_pickled_object_arrays_are_refused(tmp_path):
    q, k, v = _arrays()
    obj = np.empty(q.shape, dtype=object)
    obj[...] = 1.0
    _write_npz(tmp_path / "a.npz", _members(obj, k, v, _meta()))
    with pytest.raises(TraceError, match="q: object arrays are refused"):
        load_trace(tmp_path / "a.npz")
    members = _members(q, k, v, _meta())
    members["meta.npy"] = _npy_bytes(np.array({"format": FORMAT}, dtype=object))  # a pickled dict
    _write_npz(tmp_path / "b.npz", members)
    with pytest.raises(TraceError, match="meta: expected a 0-d unicode array holding JSON"):
        load_trace(tmp_path / "b.npz")


@pytest.mark.parametrize("value,label", [(np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf")])
def test_non_finite_values_are_located(tmp_path, value, label):
    q, k, v = _arrays(np.float32)
    k[1, 0, 5, 3] = value
    _write_npz(tmp_path / "t.npz", _members(q, k, v, _meta()))
    with pytest.raises(TraceError, match=rf"k: non-finite value {label} at \[layer, head, position, dim\] = "
                                         r"\[1, 0, 5, 3\]"):
        load_trace(tmp_path / "t.npz")


def test_finite_check_does_not_copy_large_arrays():
    a = np.ones((4, 8, 1024, 256), np.float16)  # 16 MiB
    a[3, 7, 1023, 255] = np.inf
    tracemalloc.start()
    with pytest.raises(TraceError, match=r"\[3, 7, 1023, 255\]"):
        fmt._check_finite("q", a, "x")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < a.nbytes / 2


def test_shape_and_dtype_mismatches(tmp_path):
    q, k, v = _arrays()
    _write_npz(tmp_path / "a.npz", _members(q, k[:, :, :10], v, _meta()))
    with pytest.raises(TraceError, match=r"a.npz: k: expected shape \(layers, kv_heads, seq_len, "
                                         r"head_dim\) = \(2, 2, 16, 8\), got \(2, 2, 10, 8\)"):
        load_trace(tmp_path / "a.npz")
    _write_npz(tmp_path / "b.npz", _members(q[0], k, v, _meta()))
    with pytest.raises(TraceError, match=r"q: expected 4 dimensions .* got shape \(4, 16, 8\)"):
        load_trace(tmp_path / "b.npz")
    _write_npz(tmp_path / "c.npz", _members(q, k.astype(np.float64), v, _meta()))
    with pytest.raises(TraceError, match="k: expected dtype float16 or float32, got 'float64'"):
        load_trace(tmp_path / "c.npz")
    _write_npz(tmp_path / "d.npz", _members(q, k, v.astype(np.float32), _meta()))
    with pytest.raises(TraceError, match="q/k/v: expected one dtype for all three"):
        load_trace(tmp_path / "d.npz")


@pytest.mark.parametrize("over,pattern", [
    ({"layers": "2"}, r"meta.layers: expected an integer >= 1, got '2'"),
    ({"layers": 0}, r"meta.layers: expected an integer >= 1, got 0"),
    ({"heads": True}, r"meta.heads: expected an integer >= 1, got True"),
    ({"kv_heads": 3, "heads": 4}, r"meta.kv_heads: expected a divisor of heads=4, got 3"),
    ({"causal": "yes"}, r"meta.causal: expected true or false, got 'yes'"),
    ({"format": "soc.trace/2"}, r"meta.format: expected 'soc.trace/1', got 'soc.trace/2'"),
    ({"source": "camera"}, r"meta.source: expected 'capture' or 'synthetic', got 'camera'"),
    ({"scale": -1.0}, r"meta.scale: expected a positive finite number, got -1.0"),
    ({"query_offset": 16}, r"meta.query_offset: expected < seq_len=16"),
    ({"model": ""}, r"meta.model: expected a non-empty string"),
    ({"source": "capture"}, r"meta: a capture needs 'text_sha256' and 'tokens'"),
    ({"text_sha256": "xyz"}, r"meta.text_sha256: expected 64 lowercase hex digits"),
])
def test_bad_metadata(tmp_path, over, pattern):
    _write_npz(tmp_path / "m.npz", _members(*_arrays(), _meta(**over)))
    with pytest.raises(TraceError, match=r"m.npz: " + pattern):
        load_trace(tmp_path / "m.npz")


def test_bad_metadata_json_and_missing_keys(tmp_path):
    _write_npz(tmp_path / "a.npz", _members(*_arrays(), "{not json"))
    with pytest.raises(TraceError, match="a.npz: meta: invalid JSON"):
        load_trace(tmp_path / "a.npz")
    _write_npz(tmp_path / "b.npz", _members(*_arrays(), "[1, 2]"))
    with pytest.raises(TraceError, match="meta: expected a JSON object, got 'list'"):
        load_trace(tmp_path / "b.npz")
    m = _meta()
    del m["head_dim"], m["format"]
    _write_npz(tmp_path / "c.npz", _members(*_arrays(), m))
    with pytest.raises(TraceError, match="missing required key.*format, head_dim"):
        load_trace(tmp_path / "c.npz")
    d = save_trace(tmp_path / "dir", *_arrays(), _meta())
    (d / "meta.json").write_text('{"format": ')
    with pytest.raises(TraceError, match=r"dir/meta.json: meta: invalid JSON"):
        load_trace(d)


def test_terabyte_header_is_refused_before_allocating(tmp_path):
    big = (1024, 1024, 1024, 1024)  # 4 TiB of float32
    meta = _meta(layers=1024, heads=1024, kv_heads=1024, seq_len=1024, head_dim=1024)
    members = {n: _npy_header_only(big) for n in ("q.npy", "k.npy", "v.npy")}
    members["meta.npy"] = _npy_bytes(np.array(json.dumps(meta)))
    _write_npz(tmp_path / "huge.npz", members)
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(TraceError, match=r"huge.npz: q/k/v declare 13194139533312 bytes, more than "
                                         r"max_bytes=8589934592"):
        load_trace(tmp_path / "huge.npz")
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 1.0 and peak < 2**20
    with pytest.raises(TraceError, match="header declares 4398046511104 data bytes but 64 are stored"):
        load_trace(tmp_path / "huge.npz", max_bytes=2**60)
    d = tmp_path / "hugedir"
    d.mkdir()
    for n in "qkv":
        (d / f"{n}.npy").write_bytes(_npy_header_only(big))
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(TraceError, match="hugedir: q: header declares 4398046511104 data bytes"):
        load_trace(d, mmap=True)


def test_garbage_npy_header(tmp_path):
    members = _members(*_arrays(), _meta())
    members["k.npy"] = b"\x93NUMPY\x01\x00\x10\x00{'descr': oops}\n"
    _write_npz(tmp_path / "g.npz", members)
    with pytest.raises(TraceError, match="k: not a valid .npy header"):
        load_trace(tmp_path / "g.npz")


def test_mapped_load_scans_through_the_file_without_faulting_the_mapping_in(tmp_path):
    """The CRC and NaN/Inf scan of a memory-mapped trace reads 1 MiB at a time through the file: resident
    memory grows by far less than the trace (a scan of the mapping would fault every page in)."""
    def rss() -> int:
        with open("/proc/self/status", encoding="ascii") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))

    a = np.zeros((1, 4, 4096, 1024), np.float16)  # 32 MiB per array, 96 MiB in all
    meta = {"model": "toy", "source": "synthetic", "causal": False, "layers": 1, "heads": 4, "kv_heads": 4,
            "seq_len": 4096, "head_dim": 1024}
    paths = [save_trace(tmp_path / "t.npz", a, a, a, meta), save_trace(tmp_path / "tdir", a, a, a, meta)]
    del a
    bad = np.zeros((1, 4, 4096, 1024), np.float16)
    save_trace_unchecked = tmp_path / "bad"
    save_trace(save_trace_unchecked, bad, bad, bad, meta)
    bad[0, 3, 4095, 1023] = np.inf  # the very last value: the whole array is scanned
    np.save(save_trace_unchecked / "q.npy", bad)  # no check on this write: the loader must find it
    del bad
    for path in paths:
        before = rss()
        trace = load_trace(path, mmap=True)
        assert rss() - before < 24 * 2**20, path
        assert isinstance(trace.q, np.memmap)
    with pytest.raises(TraceError, match=r"q: non-finite value inf at \[layer, head, position, dim\] = "
                                         r"\[0, 3, 4095, 1023\]"):
        load_trace(save_trace_unchecked, mmap=True)


def test_a_worker_skips_the_value_scan_and_the_functional_pass_still_refuses_the_layer(tmp_path):
    """scan_values=False (a sharded run's workers: the driver scanned the files) opens a mapped directory trace
    without reading its values; a non-finite value is then refused by the functional pass, naming its layer."""
    from soc.attention.functional import run_functional
    from soc.attention.spec import LayerRule, PruningSpec

    q, k, v = _arrays(np.float16)
    k[1, 0, 5, 3] = np.nan
    path = tmp_path / "tdir"
    path.mkdir()
    for name, arr in (("q", q), ("k", k), ("v", v)):
        np.save(path / f"{name}.npy", arr)
    (path / "meta.json").write_text(json.dumps(_meta()))
    with pytest.raises(TraceError, match=r"k: non-finite value nan at \[layer, head, position, dim\] = \[1, 0, 5, 3\]"):
        load_trace(path, mmap=True)
    trace = load_trace(path, mmap=True, scan_values=False)
    np.testing.assert_array_equal(trace.k[0], k[0])
    spec = PruningSpec(LayerRule("threshold", target_kept_fraction=0.5))
    run_functional(trace.q, trace.k, trace.v, scale=0.5, causal=True, pruning=spec, q_tile=4, k_tile=4,
                   layers=[0])  # layer 0 is clean
    with pytest.raises(TraceError, match="k: expected finite values, found NaN or inf in layer 1"):
        run_functional(trace.q, trace.k, trace.v, scale=0.5, causal=True, pruning=spec, q_tile=4, k_tile=4)
