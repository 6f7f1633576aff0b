"""Fuzzing the trace loader: every generated file loads as a valid trace, or ends in one TraceError line.

Generated cases: byte-level corruption of valid traces (truncation, flipped and overwritten bytes, insertions,
deletions; stored and deflated .npz, directory traces), and structured ones: metadata with wrong types, missing
keys, huge, zero, negative and NaN values, invalid or deeply nested JSON; q/k/v of wrong shapes, mismatched with
each other, of every other dtype (float64, big-endian, integers, complex, strings, structured, pickled objects),
headers that claim terabytes, missing members. For each: ``load_trace`` returns a ``Trace`` whose arrays match
its metadata and hold only finite values, or raises ``TraceError`` with a one-line message naming the file;
``trace_info`` likewise; never another exception and never more than ``MEMORY_BOUND_BYTES`` allocated
(tracemalloc peak; every generated file is under 64 KiB whatever its headers claim). Every tenth refusal also
goes through ``soc.faces.cli.main(["run", "--trace", ...])``: exit 2 and exactly that message on one stderr line.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import numpy.lib.format as npf
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soc.faces.cli import trace_budget
from soc.errors import TraceError
from soc.trace import FORMAT, Trace, load_trace, save_trace, trace_info
from support import cli_one_line as _cli_one_line
from support import measured

MEMORY_BOUND_BYTES = 4 * 2**20  # generated files are < 64 KiB; claims in their headers must not be believed
MAX_BYTES = 2**20  # the in-memory budget passed to load_trace
CHARS = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=("Cs",))
SETTINGS = settings(deadline=None, derandomize=True, database=None, max_examples=200,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
L, H, KV, T, D = 2, 4, 2, 16, 8


def _meta(**over):
    d = {"format": FORMAT, "model": "toy", "source": "synthetic", "causal": True, "layers": L, "heads": H,
         "kv_heads": KV, "seq_len": T, "head_dim": D}
    d.update(over)
    return d


def _arrays(dtype=np.float32):
    rng = np.random.default_rng(0)
    return {"q": rng.standard_normal((L, H, T, D)).astype(dtype), "k": rng.standard_normal((L, KV, T, D)).astype(dtype),
            "v": rng.standard_normal((L, KV, T, D)).astype(dtype)}


def _npy(a, pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=pickle)
    return buf.getvalue()


def _header_only(shape, descr="<f4", tail=64) -> bytes:
    buf = io.BytesIO()
    npf.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue() + b"\0" * tail


def _zip(members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------- harness
@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_trace")
    a = _arrays()
    save_trace(root / "valid.npz", a["q"], a["k"], a["v"], _meta())
    save_trace(root / "valid_dir", a["q"], a["k"], a["v"], _meta())
    members = {f"{n}.npy": _npy(x) for n, x in a.items()}
    members["meta.npy"] = _npy(np.array(json.dumps(_meta())))
    (root / "valid_deflated.npz").write_bytes(_zip(members, zipfile.ZIP_DEFLATED))
    return root


_refusals = {"n": 0}


def _check_message(exc: TraceError, path: Path) -> str:
    msg = str(exc)
    assert msg.startswith(str(path)), msg  # names the file
    assert "\n" not in msg and "\r" not in msg and len(msg) < 2000, msg
    return msg


def check_trace(path: Path, mmap: bool) -> Trace | None:
    """The loader contract for one file: a valid Trace, or one TraceError line; bounded memory."""
    try:
        with measured() as used:
            trace = load_trace(path, mmap=mmap, max_bytes=MAX_BYTES)
    except TraceError as exc:
        assert used["peak"] < MEMORY_BOUND_BYTES, used
        _check_message(exc, path)
        _refusals["n"] += 1
        if _refusals["n"] % 10 == 0:
            try:  # the CLI loads with mmap=True and a larger budget: compare only if that refuses too
                load_trace(path, mmap=True, max_bytes=trace_budget())
            except TraceError as again:
                line = _cli_one_line(["run", "--trace", str(path), "--out", str(path.parent / "out")])
                assert line == f"soc: error: {again}"
        trace = None
    else:
        assert used["peak"] < MEMORY_BOUND_BYTES + trace.nbytes(), used
        shapes = trace.meta.expected_shapes()
        for name in ("q", "k", "v"):
            a = getattr(trace, name)
            assert a.shape == shapes[name] and a.dtype in (np.float16, np.float32)
            assert np.isfinite(a).all()
    try:
        with measured() as used:
            info = trace_info(path)
    except TraceError as exc:
        assert used["peak"] < MEMORY_BOUND_BYTES, used
        _check_message(exc, path)
        assert trace is None  # what loads can be described
    else:
        assert used["peak"] < MEMORY_BOUND_BYTES, used
        assert info["memory_bytes"] == sum(math.prod(a["shape"]) * np.dtype(a["dtype"]).itemsize
                                           for a in info["arrays"].values())
        if trace is not None:
            assert info["memory_bytes"] == trace.nbytes() and info["meta"] == trace.meta.to_dict()
    return trace


# --------------------------------------------------------------------------------------------- corruption
@SETTINGS
@given(source=st.sampled_from(["valid.npz", "valid_deflated.npz", "valid_dir/q.npy", "valid_dir/meta.json"]),
       op=st.sampled_from(["truncate", "flip", "overwrite", "insert", "delete"]),
       where=st.floats(0, 1), count=st.integers(1, 16), noise=st.binary(min_size=1, max_size=64),
       mmap=st.booleans())
def test_corrupted_files(work, source, op, where, count, noise, mmap):
    """Damage a valid trace anywhere: the loader finds it, or (.npz) the damage missed every checksummed byte
    (a timestamp, a comment) and the trace is the original. A directory trace has no checksums: a changed value
    inside the data loads (it is finite and of the right shape), which is the documented limit."""
    src = work / source
    data = bytearray(src.read_bytes())
    at = int(where * (len(data) - 1))
    if op == "truncate":
        data = data[:at]
    elif op == "flip":
        for i in range(count):
            data[(at + 7919 * i) % len(data)] ^= noise[i % len(noise)] or 0xFF
    elif op == "overwrite":
        data[at:at + len(noise)] = noise
    elif op == "insert":
        data[at:at] = noise
    else:
        del data[at:at + count * 16]
    if source.startswith("valid_dir/"):
        target = work / "corrupt_dir"
        target.mkdir(exist_ok=True)
        for f in (work / "valid_dir").iterdir():
            (target / f.name).write_bytes(f.read_bytes())
        (target / src.name).write_bytes(bytes(data))
    else:
        target = work / "corrupt.npz"
        target.write_bytes(bytes(data))
    trace = check_trace(target, mmap)
    if trace is not None and target.suffix == ".npz":
        # zip CRCs cover every member (checked for mapped ones too): what loads is the original, unchanged
        original = load_trace(work / "valid.npz")
        assert trace.meta == original.meta
        for name in ("q", "k", "v"):
            assert np.array_equal(getattr(trace, name), getattr(original, name))


# --------------------------------------------------------------------------------------------- structure
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
              st.sampled_from([0, -1, 1, 2**31, 2**40, 2**53, 2**53 + 1, 10**30, 0.5, 1e308]),
              st.floats(allow_nan=True, allow_infinity=True), st.text(CHARS, max_size=10),
              st.sampled_from([FORMAT, "soc.trace/2", "capture", "synthetic", "a" * 64])),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(CHARS, max_size=6), kids, max_size=3),
    max_leaves=8)
META_KEYS = ["format", "model", "source", "causal", "layers", "heads", "kv_heads", "seq_len", "head_dim",
             "scale", "query_offset", "text_sha256", "tokens", "provenance", "text", "extra_key"]
DTYPES = ["<f4", "<f2", "<f8", ">f4", "<i4", "|u1", "<c8", "|b1", "|O", "<U2", "|V4", [("a", "<f4")],
          [("o", "|O")], "<M8[s]"]
shapes = st.lists(st.integers(0, 5), min_size=0, max_size=5).map(tuple)


@st.composite
def members_strategy(draw):
    """A whole trace's members: metadata and q/k/v, each valid or broken in one of many ways."""
    meta = _meta()
    # break the metadata in about a third of the cases, so that array checks behind it are reached too
    broken_meta = draw(st.sampled_from([False, False, True]))
    for _ in range(draw(st.integers(1, 3)) if broken_meta else 0):
        key = draw(st.sampled_from(META_KEYS))
        if draw(st.booleans()) and key in meta:
            del meta[key]
        else:
            meta[key] = draw(json_values)
    huge = draw(st.sampled_from([False] * 4 + [True]))
    if huge:  # headers (and metadata) claiming terabytes to exabytes
        dims = draw(st.lists(st.sampled_from([2**10, 2**16, 2**20, 2**31, 2**40]), min_size=4, max_size=4))
        meta.update(layers=dims[0], heads=dims[1], kv_heads=dims[1], seq_len=dims[2], head_dim=dims[3])
    meta_kind = (draw(st.sampled_from(["json", "text", "deep", "bytes", "pickled", "1d", "none"])) if broken_meta
                 else "json")
    if meta_kind == "json":
        text = json.dumps(meta)
    elif meta_kind == "text":
        text = draw(st.text(CHARS, max_size=40))
    elif meta_kind == "deep":
        text = "[" * draw(st.integers(100, 100_000))
    members: dict[str, bytes] = {}
    if meta_kind in ("json", "text", "deep"):
        members["meta.npy"] = _npy(np.array(text))
    elif meta_kind == "bytes":
        members["meta.npy"] = _npy(np.array(json.dumps(meta).encode()))
    elif meta_kind == "pickled":
        members["meta.npy"] = _npy(np.array([meta], dtype=object), pickle=True)
    elif meta_kind == "1d":
        members["meta.npy"] = _npy(np.array([json.dumps(meta)]))
    good = _arrays(draw(st.sampled_from([np.float16, np.float32])))
    for name in ("q", "k", "v"):
        kind = draw(st.sampled_from(["good", "good", "good", "shape", "dtype", "header", "nan", "pickled",
                                     "garbage", "missing", "fortran"]))
        a = good[name]
        if huge and kind != "missing":
            shape = (meta["layers"], meta["heads"] if name == "q" else meta["kv_heads"], meta["seq_len"],
                     meta["head_dim"])
            members[f"{name}.npy"] = _header_only(shape, tail=draw(st.integers(0, 256)))
        elif kind == "good":
            members[f"{name}.npy"] = _npy(a)
        elif kind == "shape":
            members[f"{name}.npy"] = _npy(np.zeros(draw(shapes), a.dtype))
        elif kind == "dtype":
            dt = np.dtype(draw(st.sampled_from(DTYPES)))
            members[f"{name}.npy"] = (_npy(np.zeros(a.shape, dt), pickle=True) if dt.hasobject
                                      else _header_only(a.shape, npf.dtype_to_descr(dt), a.size * dt.itemsize))
        elif kind == "header":  # a header whose shape or length lies
            members[f"{name}.npy"] = _header_only(draw(shapes) if draw(st.booleans()) else a.shape,
                                                  tail=draw(st.integers(0, 4096)))
        elif kind == "nan":
            b = a.copy()
            b.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
            members[f"{name}.npy"] = _npy(b)
        elif kind == "pickled":
            members[f"{name}.npy"] = _npy(a.astype(object), pickle=True)
        elif kind == "garbage":
            members[f"{name}.npy"] = draw(st.binary(max_size=128))
        elif kind == "fortran":
            members[f"{name}.npy"] = _npy(np.asfortranarray(a))
    if draw(st.booleans()):
        members["extra.npy"] = _npy(np.zeros(3))
    return members


@SETTINGS
@given(members=members_strategy(), layout=st.sampled_from(["stored", "deflated", "dir"]), mmap=st.booleans())
def test_structurally_wrong_traces(work, members, layout, mmap):
    if layout == "dir":
        target = work / "struct_dir"
        target.mkdir(exist_ok=True)
        for f in target.iterdir():
            f.unlink()
        for name, data in members.items():
            if name == "meta.npy":  # a directory trace holds its metadata as meta.json
                try:
                    text = str(npf.read_array(io.BytesIO(data), allow_pickle=False)[()])
                except ValueError:
                    text = data.decode("latin-1")
                (target / "meta.json").write_text(text, encoding="utf-8")
            else:
                (target / name).write_bytes(data)
    else:
        target = work / "struct.npz"
        target.write_bytes(_zip(members, zipfile.ZIP_DEFLATED if layout == "deflated" else zipfile.ZIP_STORED))
    check_trace(target, mmap)


@settings(SETTINGS, max_examples=100)  # 200 + 200 + 100: the issue asks for 500 generated cases
@given(raw=st.binary(max_size=512), prefix=st.sampled_from([b"", b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY"]))
def test_arbitrary_bytes(work, raw, prefix):
    target = work / "bytes.npz"
    target.write_bytes(prefix + raw)
    check_trace(target, mmap=False)


# --------------------------------------------------------------------------------------------- worst cases
def _worst_meta_cases(root: Path) -> dict[str, tuple[Path, str]]:
    a = _arrays()
    cases = {}

    def npz(name, meta_text, arrays=None, extra=None):
        members = {f"{n}.npy": _npy(x) for n, x in (arrays or a).items()}
        members["meta.npy"] = _npy(np.array(meta_text))
        members.update(extra or {})
        path = root / f"{name}.npz"
        path.write_bytes(_zip(members))
        return path

    big = (2**20, 2**20, 2**20, 2**20)
    huge_meta = json.dumps(_meta(layers=2**20, heads=2**20, kv_heads=2**20, seq_len=2**20, head_dim=2**20))
    p = root / "exabyte.npz"
    p.write_bytes(_zip({**{f"{n}.npy": _header_only(big) for n in "qkv"}, "meta.npy": _npy(np.array(huge_meta))}))
    over_budget = rf"q/k/v declare {3 * 4 * 2**80} bytes, more than max_bytes={8 * 2**30}"
    cases["headers claiming 2**82 bytes each"] = (p, over_budget)
    cases["metadata of 2 MiB"] = (npz("bigmeta", json.dumps(_meta(note="x" * 2**21))),
                                  r"meta: expected at most 262144 characters, got 2097")
    fill = (2**18 - len(json.dumps(_meta())) - 20) // 3  # just under the bound: 87,000 objects to build
    cases["metadata at the bound"] = (npz("fullmeta", json.dumps(_meta(layers=3, x=[{}] * fill),
                                                                 separators=(",", ":"))),
                                      r"q: expected shape .* = \(3, 4, 16, 8\), got \(2, 4, 16, 8\)")
    cases["metadata nested 10^5 deep"] = (npz("deepmeta", "[" * 100_000 + "]" * 100_000),
                                          r"meta: JSON nested too deeply")
    cases["an integer of 5000 digits"] = (npz("bigint", json.dumps(_meta())[:-1] + ', "n": 1' + "0" * 5000 + "}"),
                                          r"meta: a value cannot be read")
    cases["layers past 2**53"] = (npz("layers53", json.dumps(_meta(layers=2**53 + 1))),
                                  r"meta.layers: expected an integer <= 2\*\*53, got 9007199254740993")
    cases["a list of 3x10^4 where a string belongs"] = (npz("biglist", json.dumps(_meta(model=list(range(30_000))))),
                                                      r"meta.model: expected a non-empty string, got \[0, 1, 2")
    cases["NaN scale"] = (npz("nanscale", json.dumps(_meta(scale=float("nan")))),
                          r"meta.scale: expected a positive finite number, got nan")
    cases["object arrays (pickle)"] = (npz("pickled", json.dumps(_meta()), extra={"q.npy": _npy(
        a["q"].astype(object), pickle=True)}), r"q: object arrays are refused")
    cases["mismatched k and v"] = (npz("kv", json.dumps(_meta()), extra={"v.npy": _npy(a["v"][:, :, :-1])}),
                                   r"v: expected shape .* got \(2, 2, 15, 8\)")
    cases["q and k of different dtypes"] = (npz("mixed", json.dumps(_meta()), extra={
        "k.npy": _npy(a["k"].astype(np.float16))}), r"q/k/v: expected one dtype for all three")
    return cases


def test_worst_cases_are_refused_quickly_and_boundedly(tmp_path):
    for label, (path, message) in _worst_meta_cases(tmp_path).items():
        with pytest.raises(TraceError, match=message) as info, measured() as used:
            load_trace(path)  # the default budget: 8 GiB
        assert used["s"] < 5.0 and used["peak"] < 32 * 2**20, (label, used)
        _check_message(info.value, path)
        with pytest.raises(TraceError) as mapped:  # what `soc run` does: mmap=True (no in-memory budget)
            load_trace(path, mmap=True)
        line = _cli_one_line(["run", "--trace", str(path), "--out", str(tmp_path / "out")])
        assert line == f"soc: error: {mapped.value}", label
    assert not (tmp_path / "out").exists()  # nothing written for a refused input


def test_missing_paths_and_odd_names(tmp_path):
    for path, message in [(tmp_path / "nope.npz", r"nope.npz: no such trace file or directory"),
                          (tmp_path / ("a" * 5000 + ".npz"), r"cannot read \(File name too long\)"),
                          (Path("/dev/zero"), r"/dev/zero: not a regular file or a directory"),
                          (tmp_path, r"missing k.npy \(a trace directory holds")]:
        with pytest.raises(TraceError, match=message):
            load_trace(path)
        assert _cli_one_line(["trace", "info", str(path)]).startswith("soc: error: ")
