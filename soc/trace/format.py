"""Workload trace format v1: the Q, K, V tensors that the accelerator replays.

A trace holds, for every transformer layer and attention head, the query, key and value vectors that enter
the attention block (after projection and positional encoding, before Q·Kᵀ): exactly what the analog CIM core
scores and the digital processor attends over. Two layouts hold the same content:

* ``NAME.npz``: an uncompressed zip of ``q.npy``, ``k.npy``, ``v.npy`` and ``meta.npy`` (a 0-d unicode array
  holding a JSON object). Uncompressed members can be memory-mapped in place.
* ``NAME/`` (a directory): ``q.npy``, ``k.npy``, ``v.npy`` and ``meta.json``, for traces too large for memory.

Loading never unpickles, and every ``.npy`` header is read and checked against the metadata before any data
is read, so a corrupt or hostile file is refused before memory is allocated.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import tokenize
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import numpy.lib.format as npf

from soc.config.fields import PATH_CHARS, one_line, show
from soc.errors import TraceError
from soc.io import atomic_open, clean_stale, temp_prefix
from soc.trace.meta import FORMAT, SOURCES, TraceMeta, check_model_meta
from soc.trace.meta import bad as _bad

__all__ = ["FORMAT", "SOURCES", "ARRAYS", "Trace", "TraceMeta", "load_trace", "save_trace", "trace_info",
           "check_arrays", "save_trace_layers"]

ARRAYS = ("q", "k", "v")
_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))
_DIR_FILES = frozenset({"q.npy", "k.npy", "v.npy", "meta.json"})
# metadata is a few KiB (a capture's token ids: ~7 characters per token, so this holds ~37,000 tokens); the
# bound caps what parsing and validating it allocates: < 32 MiB (measured: 25 MiB for 2**18 chars of "{},")
_MAX_META_CHARS = 2**18
_FINITE_CHUNK = 1 << 20  # elements per isfinite() pass, into one reused 1 MiB boolean buffer
_SHAPE_DOC = {
    "q": "(layers, heads, seq_len - query_offset, head_dim)",
    "k": "(layers, kv_heads, seq_len, head_dim)",
    "v": "(layers, kv_heads, seq_len, head_dim)",
}


def _check_header(name: str, shape: tuple[int, ...], dtype: np.dtype, meta: TraceMeta, where: str) -> None:
    if dtype.hasobject:
        raise TraceError(f"{where}: {name}: object arrays are refused (loading them would unpickle)")
    if dtype not in _DTYPES:
        raise _bad(where, name, "dtype float16 or float32", str(dtype))
    expected = meta.expected_shapes()[name]
    if len(shape) != 4:
        raise TraceError(f"{where}: {name}: expected 4 dimensions {_SHAPE_DOC[name]}, "
                         f"got shape {show(tuple(shape))}")
    if tuple(shape) != expected:
        raise TraceError(f"{where}: {name}: expected shape {_SHAPE_DOC[name]} = {expected}, "
                         f"got {show(tuple(shape))}")


def check_arrays(arrays: Mapping[str, np.ndarray], meta: TraceMeta, where: str, *,
                 finite: bool = True) -> None:
    """Check q/k/v shapes and dtypes against ``meta`` (and, if ``finite``, that no value is NaN or Inf)."""
    for name in ARRAYS:
        _check_header(name, arrays[name].shape, arrays[name].dtype, meta, where)
    if len({arrays[n].dtype for n in ARRAYS}) != 1:
        raise _bad(where, "q/k/v", "one dtype for all three", [str(arrays[n].dtype) for n in ARRAYS])
    if finite:
        for name in ARRAYS:
            _check_finite(name, arrays[name], where)


def _check_finite(name: str, a: np.ndarray, where: str) -> None:
    order: Literal["C", "F"] = "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"
    flat = a.ravel(order="K")  # a view for contiguous and memory-mapped arrays: no full copy
    buf = np.empty(min(flat.size, _FINITE_CHUNK), bool)
    for start in range(0, flat.size, _FINITE_CHUNK):
        chunk = flat[start:start + _FINITE_CHUNK]
        ok = np.isfinite(chunk, out=buf[:chunk.size])
        if not ok.all():
            index = np.unravel_index(start + int(np.argmin(ok)), a.shape, order=order)
            raise TraceError(f"{where}: {name}: non-finite value {a[index]} at "
                             f"[layer, head, position, dim] = {[int(i) for i in index]}")


@dataclass(frozen=True)
class Trace:
    """One workload trace: q (layers, heads, seq_q, head_dim); k, v (layers, kv_heads, seq_len, head_dim)."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    meta: TraceMeta
    path: str | None = None

    def __post_init__(self) -> None:
        check_arrays({"q": self.q, "k": self.k, "v": self.v}, self.meta, self.path or "<trace>", finite=False)

    @property
    def seq_q(self) -> int:
        return int(self.q.shape[2])

    def nbytes(self) -> int:
        return int(self.q.nbytes + self.k.nbytes + self.v.nbytes)


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class _Header:
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    data_offset: int  # bytes from the start of the .npy stream to the array data


def _read_header(fh: IO[bytes], where: str, name: str) -> _Header:
    try:
        version = npf.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = npf.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = npf.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, SyntaxError, tokenize.TokenError) as exc:
        raise TraceError(f"{where}: {name}: not a valid .npy header ({one_line(exc)})") from None
    return _Header(tuple(shape), np.dtype(dtype), bool(fortran), fh.tell())


def _data_bytes(h: _Header) -> int:
    return math.prod(h.shape) * h.dtype.itemsize


def _check_meta_header(h: _Header, where: str, name: str) -> None:
    if h.dtype.kind != "U" or h.shape != ():
        raise _bad(where, name, "a 0-d unicode array holding JSON", f"{h.dtype} array of shape {h.shape}")
    if _data_bytes(h) // 4 > _MAX_META_CHARS:  # numpy stores unicode as UTF-32
        raise _bad(where, name, f"at most {_MAX_META_CHARS} characters", _data_bytes(h) // 4)


def _parse_meta(text: str, where: str) -> TraceMeta:
    try:
        d = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TraceError(f"{where}: meta: invalid JSON ({one_line(exc)})") from None
    except RecursionError:  # the decoder recurses per nesting level
        raise TraceError(f"{where}: meta: JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise TraceError(f"{where}: meta: a value cannot be read ({one_line(exc)})") from None
    return TraceMeta.from_dict(d, where)


def _check_budget(headers: Mapping[str, _Header], meta: TraceMeta, where: str, max_bytes: float) -> None:
    """Validate q/k/v headers against ``meta`` and the memory budget (before any data is read)."""
    for name in ARRAYS:
        _check_header(name, headers[name].shape, headers[name].dtype, meta, where)
    if len({headers[n].dtype for n in ARRAYS}) != 1:
        raise _bad(where, "q/k/v", "one dtype for all three", [str(headers[n].dtype) for n in ARRAYS])
    total = sum(_data_bytes(headers[n]) for n in ARRAYS)
    if total > max_bytes:
        raise TraceError(f"{where}: q/k/v declare {total} bytes, more than max_bytes={int(max_bytes)}; "
                         "use a directory trace with mmap=True or raise max_bytes")


def _check_length(h: _Header, stored_bytes: int, where: str, name: str) -> None:
    if stored_bytes - h.data_offset != _data_bytes(h):
        raise TraceError(f"{where}: {name}: header declares {_data_bytes(h)} data bytes but "
                         f"{stored_bytes - h.data_offset} are stored (truncated or corrupt)")


def _zip_member_offset(fh: IO[bytes], info: zipfile.ZipInfo) -> int:
    """File offset of a stored zip member's data (after its local header)."""
    fh.seek(info.header_offset)
    local = fh.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"bad local header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _scan(fh: IO[bytes], start: int, size: int, h: _Header, where: str, name: str, crc: int | None = None
          ) -> None:
    """One sequential pass over a stored array, 1 MiB at a time: the zip CRC-32 (if ``crc`` is given; a
    memory-mapped member bypasses zipfile's check) and the NaN/Inf scan of its values. Reading through the
    file, not the mapping, keeps the process's memory bounded (a mapped scan faults every page in)."""
    fh.seek(start)
    head = fh.read(h.data_offset)
    running = zlib.crc32(head) if crc is not None else 0
    step = max(1, _FINITE_CHUNK // h.dtype.itemsize) * h.dtype.itemsize
    left, seen = size - len(head), 0
    while left > 0:
        chunk = fh.read(min(left, step))
        if not chunk:
            break
        if crc is not None:
            running = zlib.crc32(chunk, running)
        values = np.frombuffer(chunk, dtype=h.dtype, count=len(chunk) // h.dtype.itemsize)
        ok = np.isfinite(values)
        if not ok.all():
            flat = seen + int(np.argmin(ok))
            index = np.unravel_index(flat, h.shape, order="F" if h.fortran else "C")
            raise TraceError(f"{where}: {name}: non-finite value {values[flat - seen]} at "
                             f"[layer, head, position, dim] = {[int(i) for i in index]}")
        seen += values.size
        left -= len(chunk)
    if left or (crc is not None and running != crc):
        what = "fails the zip CRC-32 check" if crc is not None else "is shorter than its header says"
        raise TraceError(f"{where}: {name}.npy {what} (corrupt or truncated)")


# a deflated member is decompressed into memory: refuse one that claims far more than it stores (float
# activations compress < 2:1; a zip bomb's zeros 1000:1)
_MAX_DEFLATE_RATIO = 20
_DEFLATE_SMALL = 64 * 2**20


def _open_npz(path: Path, *, read: bool, mmap: bool, max_bytes: float, scanned: set[str] | None = None,
              scan_values: bool = True) -> tuple[TraceMeta, dict[str, Any]]:
    # a zip member's CRC-32 is checked in the same pass as its values: scan_values does not apply
    where = one_line(path, PATH_CHARS)
    try:
        with zipfile.ZipFile(path) as zf:
            members = {i.filename: i for i in zf.infolist()}
            for name in ("meta", *ARRAYS):
                if f"{name}.npy" not in members:
                    raise TraceError(f"{where}: missing array '{name}' (members: {sorted(members)})")
            headers: dict[str, _Header] = {}
            for name in ("meta", *ARRAYS):
                with zf.open(f"{name}.npy") as fh:
                    headers[name] = _read_header(fh, where, name)
            _check_meta_header(headers["meta"], where, "meta")
            _check_length(headers["meta"], members["meta.npy"].file_size, where, "meta")
            with zf.open("meta.npy") as fh:
                meta = _parse_meta(str(npf.read_array(fh, allow_pickle=False)[()]), where)
            mapped = mmap and all(members[f"{n}.npy"].compress_type == zipfile.ZIP_STORED for n in ARRAYS)
            # order matters: dtype/shape, then the memory budget, then the stored length (a lying header
            # claiming terabytes is reported as over budget, before anything else is read)
            _check_budget(headers, meta, where, max_bytes if read and not mapped else math.inf)
            for name in ARRAYS:
                info = members[f"{name}.npy"]
                _check_length(headers[name], info.file_size, where, name)
                if (read and info.compress_type != zipfile.ZIP_STORED and info.file_size > _DEFLATE_SMALL
                        and info.file_size > _MAX_DEFLATE_RATIO * max(1, info.compress_size)):
                    raise TraceError(f"{where}: {name}.npy claims {info.file_size:,} bytes compressed into "
                                     f"{info.compress_size:,} (more than {_MAX_DEFLATE_RATIO}:1, a zip bomb?); "
                                     "store traces uncompressed (np.savez, as soc does)")
            if not read:
                return meta, headers
            arrays: dict[str, Any] = {}
            for name in ARRAYS:
                info, h = members[f"{name}.npy"], headers[name]
                if mmap and info.compress_type == zipfile.ZIP_STORED:
                    with open(path, "rb") as raw:
                        start = _zip_member_offset(raw, info)
                        _scan(raw, start, info.compress_size, h, where, name, crc=info.CRC)
                    if scanned is not None:
                        scanned.add(name)
                    offset = start + h.data_offset
                    arrays[name] = np.memmap(path, dtype=h.dtype, mode="r", offset=offset, shape=h.shape,
                                             order="F" if h.fortran else "C")
                else:
                    with zf.open(info) as fh:
                        arrays[name] = npf.read_array(fh, allow_pickle=False)
            return meta, arrays
    except zipfile.BadZipFile as exc:
        raise TraceError(f"{where}: not a valid .npz (zip) archive: {one_line(exc)} "
                         "(truncated or corrupt?)") from None
    except (ValueError, EOFError, OSError, zlib.error) as exc:  # e.g. a seek to a corrupt (negative) offset
        raise TraceError(f"{where}: cannot read ({type(exc).__name__}: {one_line(exc)}; truncated or "
                         "corrupt?)") from None


def _open_dir(path: Path, *, read: bool, mmap: bool, max_bytes: float, scanned: set[str] | None = None,
              scan_values: bool = True) -> tuple[TraceMeta, dict[str, Any]]:
    where = one_line(path, PATH_CHARS)
    for fname in sorted(_DIR_FILES):
        member = path / fname
        if not member.is_file():
            what = (f"{fname} is not a regular file" if member.exists() or member.is_symlink()
                    else f"missing {fname}")
            raise TraceError(f"{where}: {what} (a trace directory holds regular files "
                             f"{', '.join(sorted(_DIR_FILES))})")
    meta_file = path / "meta.json"
    if meta_file.stat().st_size > _MAX_META_CHARS:  # UTF-8: at least one byte per character
        raise _bad(where, "meta.json", f"at most {_MAX_META_CHARS} bytes", meta_file.stat().st_size)
    try:
        meta = _parse_meta(meta_file.read_text(encoding="utf-8"), f"{where}/meta.json")
        headers: dict[str, _Header] = {}
        for name in ARRAYS:
            with open(path / f"{name}.npy", "rb") as fh:
                headers[name] = _read_header(fh, where, name)
        _check_budget(headers, meta, where, math.inf if (mmap or not read) else max_bytes)
        for name in ARRAYS:
            _check_length(headers[name], (path / f"{name}.npy").stat().st_size, where, name)
        if not read:
            return meta, headers
        if mmap:
            for name in ARRAYS:
                if scan_values:  # else scanned by whoever handed the trace over
                    with open(path / f"{name}.npy", "rb") as raw:
                        _scan(raw, 0, (path / f"{name}.npy").stat().st_size, headers[name], where, name)
                if scanned is not None:
                    scanned.add(name)
        arrays = {n: np.load(path / f"{n}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
                  for n in ARRAYS}
    except UnicodeDecodeError as exc:
        raise TraceError(f"{where}/meta.json: not UTF-8 text ({exc})") from None
    except (ValueError, EOFError, OSError) as exc:
        raise TraceError(f"{where}: cannot read ({type(exc).__name__}: {one_line(exc)})") from None
    return meta, arrays


def _open(path: str | os.PathLike[str], **kwargs: Any) -> tuple[Path, TraceMeta, dict[str, Any]]:
    p = Path(path)
    try:
        exists, is_dir = p.exists(), p.is_dir()
    except (OSError, ValueError) as exc:  # a name longer than the file system allows, a NUL byte
        raise TraceError(f"{one_line(p, PATH_CHARS)}: cannot read "
                         f"({getattr(exc, 'strerror', None) or exc})") from None
    if not exists:
        raise TraceError(f"{one_line(p, PATH_CHARS)}: no such trace file or directory")
    if not is_dir and not p.is_file():  # a device or a pipe: /dev/zero would be read forever
        raise TraceError(f"{one_line(p, PATH_CHARS)}: not a regular file or a directory; expected a .npz file "
                         "or a trace directory")
    opener = _open_dir if is_dir else _open_npz
    meta, arrays = opener(p, **kwargs)
    return p, meta, arrays


def load_trace(path: str | os.PathLike[str], *, mmap: bool = False, max_bytes: int = 8 * 2**30,
               scan_values: bool = True) -> Trace:
    """Load and validate a trace (every check in the module docstring, then a NaN/Inf scan of all values).

    ``mmap=True`` memory-maps the arrays (read-only) of a directory trace or of an uncompressed .npz; a
    compressed .npz is read into memory. ``max_bytes`` bounds the q/k/v bytes read into memory (mapped arrays
    do not count) and is enforced from the headers, before anything is allocated. ``scan_values=False`` skips
    the scan of a mapped directory trace's values (a sharded run's workers: the driver scanned the same files;
    the functional pass still refuses a non-finite layer)."""
    scanned: set[str] = set()
    p, meta, arrays = _open(path, read=True, mmap=mmap, max_bytes=max_bytes, scanned=scanned,
                            scan_values=scan_values)
    check_arrays(arrays, meta, one_line(p, PATH_CHARS), finite=False)
    for name in ARRAYS:
        if name not in scanned:  # arrays read into memory; mapped ones were scanned while read from disk
            _check_finite(name, arrays[name], one_line(p, PATH_CHARS))
    check_model_meta(meta, one_line(p, PATH_CHARS))
    return Trace(q=arrays["q"], k=arrays["k"], v=arrays["v"], meta=meta, path=str(p))


def trace_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Shapes, dtypes, metadata and sizes of a trace, from its headers only (no array data is read)."""
    p, meta, headers = _open(path, read=False, mmap=False, max_bytes=math.inf)
    files = [p] if p.is_file() else [p / f for f in sorted(_DIR_FILES)]
    arrays = {n: {"shape": list(headers[n].shape), "dtype": str(headers[n].dtype),
                  "bytes": _data_bytes(headers[n])} for n in ARRAYS}
    return {"path": str(p), "layout": "directory" if p.is_dir() else "npz", "meta": meta.to_dict(),
            "arrays": arrays, "seq_q": meta.seq_q, "file_bytes": sum(f.stat().st_size for f in files),
            "memory_bytes": sum(a["bytes"] for a in arrays.values())}


# ---------------------------------------------------------------------------------------------- writing
def save_trace(path: str | os.PathLike[str], q: np.ndarray, k: np.ndarray, v: np.ndarray,
               meta: TraceMeta | Mapping[str, Any], *, overwrite: bool = True) -> Path:
    """Validate and write a trace atomically: ``*.npz`` -> one file, any other path -> a directory.

    Arrays are stored as given (float16 stays float16). An existing target is replaced only once the new
    trace is completely written; a directory is replaced only if it holds nothing but trace files."""
    target = Path(path)
    where = str(target)
    if isinstance(meta, Mapping):
        meta = TraceMeta.from_dict({"format": FORMAT, **meta}, where)
    elif not isinstance(meta, TraceMeta):
        raise _bad(where, "meta", "a TraceMeta or a mapping", type(meta).__name__)
    arrays = {"q": np.asarray(q), "k": np.asarray(k), "v": np.asarray(v)}
    check_arrays(arrays, meta, where, finite=True)
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise TraceError(f"{where}: a trace exists; pass --force (overwrite=True) to replace it")
    text = json.dumps(meta.to_dict(), allow_nan=False)
    try:
        if target.suffix == ".npz":
            if target.is_dir():
                raise TraceError(f"{where}: is a directory; expected a path for a .npz file")
            with atomic_open(target, "wb", exclusive=not overwrite) as fh:
                # uncompressed: float activations barely compress, and stored members can be memory-mapped
                np.savez(fh, q=arrays["q"], k=arrays["k"], v=arrays["v"], meta=np.array(text))
            os.chmod(target, 0o666 & ~_umask())  # the temporary file was private (0600)
        else:
            _save_dir(target, _write_arrays(arrays), text, overwrite=overwrite)
    except FileExistsError:  # another writer created it first (exclusive creation)
        raise TraceError(f"{where}: a trace was written there meanwhile; pass --force to replace it") from None
    except OSError as exc:
        raise TraceError(f"{where}: cannot write ({exc.strerror or exc})") from None
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_trace_layers(path: str | os.PathLike[str], meta: TraceMeta,
                      layers: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], *,
                      overwrite: bool = True) -> Path:
    """Write a directory trace layer by layer: ``layers`` yields (q, k, v) of layer 0, 1, ... in the trace's
    dtype; memory holds one layer (the files are filled through memory maps). Checked and replaced as
    :func:`save_trace` does."""
    target = Path(path)
    where = str(target)
    if target.suffix == ".npz":
        raise TraceError(f"{where}: expected a directory path; a layer-by-layer trace is a directory trace")
    if target.exists() and not overwrite:
        raise TraceError(f"{where}: already exists (pass overwrite=True to replace it)")
    shapes = meta.expected_shapes()

    def write(tmp: Path) -> None:
        files: dict[str, np.ndarray] = {}
        done = 0
        for layer, arrays in enumerate(layers):
            if layer >= meta.layers:
                raise TraceError(f"{where}: more layers than meta.layers = {meta.layers}")
            for name, a in zip(ARRAYS, arrays):
                if name not in files:
                    if a.dtype not in _DTYPES:
                        raise _bad(where, name, "dtype float16 or float32", str(a.dtype))
                    files[name] = npf.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=a.dtype,
                                                  shape=shapes[name])
                if a.shape != shapes[name][1:] or a.dtype != files[name].dtype:
                    raise _bad(where, f"{name}[{layer}]", f"shape {shapes[name][1:]} of {files[name].dtype}",
                               f"{a.shape} of {a.dtype}")
                _check_finite(name, a, f"{where} layer {layer}")
                files[name][layer] = a
            done = layer + 1
        if done != meta.layers:
            raise TraceError(f"{where}: expected {meta.layers} layers, got {done}")
        for name, mm in files.items():
            mm.flush()
            with open(tmp / f"{name}.npy", "rb+") as fh:
                os.fsync(fh.fileno())
        files.clear()

    try:
        _save_dir(target, write, json.dumps(meta.to_dict(), allow_nan=False), overwrite=overwrite)
    except FileExistsError:  # another writer created it first (exclusive creation)
        raise TraceError(f"{where}: a trace was written there meanwhile; pass --force to replace it") from None
    except OSError as exc:
        raise TraceError(f"{where}: cannot write ({exc.strerror or exc})") from None
    return target


def _write_arrays(arrays: Mapping[str, np.ndarray]):
    def write(tmp: Path) -> None:
        for name, a in arrays.items():
            with open(tmp / f"{name}.npy", "wb") as fh:
                np.save(fh, a, allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
    return write


def _save_dir(target: Path, write_arrays: Callable[[Path], None], meta_text: str,
              overwrite: bool = True) -> None:
    where = str(target)
    if target.exists():
        if not target.is_dir():
            raise TraceError(f"{where}: exists and is not a directory; refusing to replace it with a "
                             "trace directory")
        foreign = sorted(p.name for p in target.iterdir() if p.name not in _DIR_FILES)
        if foreign:
            raise TraceError(f"{where}: exists and holds non-trace files {foreign[:3]}; "
                             "refusing to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(target), suffix=".tmp", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private (0700)
        write_arrays(tmp)
        with open(tmp / "meta.json", "w", encoding="utf-8") as fh:
            fh.write(meta_text + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if not overwrite:
            os.mkdir(target)  # exclusive: of two writers racing for one new path, one wins (FileExistsError)
            os.rename(tmp, target)  # onto the empty directory just made
        elif target.exists():
            old = Path(tempfile.mkdtemp(prefix=temp_prefix(target), suffix=".old", dir=target.parent))
            os.rename(target, old / "trace")
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(old / "trace", target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
