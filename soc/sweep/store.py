"""The results store of a sweep: ``DIR/results.csv``, one row per design point, appended as points finish.

Nothing is lost and nothing is counted twice: each row is one ``os.write`` on an ``O_APPEND`` file followed by
``fsync``, so a crash leaves at most a torn last line, which the next run drops before it appends. Rows are
never rewritten except by ``open`` (to repair a torn tail) and ``drop_failed`` (to retry failures), both
atomically. One sweep at a time writes a directory (an ``flock`` on ``DIR/.sweep.lock``, released by the
kernel when the process dies, however it dies).
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from soc.errors import SocError
from soc.io import atomic_open

FIXED_BEFORE = ("id",)
FIXED_AFTER = ("trace", "seed", "replicate", "status", "error")


def _get(*keys: str) -> Callable[[Mapping[str, Any]], Any]:
    def pick(report: Mapping[str, Any]) -> Any:
        node: Any = report
        for key in keys:
            node = node.get(key) if isinstance(node, Mapping) else None
        return node
    return pick


def _sum(*getters: Callable[[Mapping[str, Any]], Any]) -> Callable[[Mapping[str, Any]], Any]:
    def total(report: Mapping[str, Any]) -> Any:
        values = [g(report) for g in getters]
        return None if any(v is None for v in values) else sum(values)
    return total


# report.json -> results.csv columns; units in every name (ratios and fractions are dimensionless)
METRICS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "latency_ns": _get("time", "latency_ns"),
    "cycles": _get("time", "cycles"),
    "kept_fraction": _get("pruning", "kept_fraction"),
    "output_rel_err": _get("accuracy", "output_rel_err"),
    "mass_kept": _get("accuracy", "mass_kept"),
    "top1_agreement": _get("accuracy", "top1_agreement"),
    "dram_bytes": _sum(_get("traffic", "dram_read_bytes"), _get("traffic", "dram_write_bytes")),
    "sram_bytes": _sum(_get("traffic", "sram_read_bytes"), _get("traffic", "sram_write_bytes")),
    "dram_savings_ratio": _get("traffic", "savings", "dram"),
    "kv_placement": _get("traffic", "kv_placement"),
    "energy_j": _get("energy", "total_j"),
    "on_chip_energy_j": _get("energy", "on_chip_j"),
    "tops_per_w": _get("energy", "tops_per_w"),
    "effective_tops_per_w": _get("energy", "effective_tops_per_w"),
    "gops": _get("throughput", "gops"),
    "effective_gops": _get("throughput", "effective_gops"),
    "queries_per_s": _get("throughput", "queries_per_s"),
    "area_mm2": _get("area", "total_mm2"),
    "util_cim": _get("utilization", "cim"),
    "util_digital": _get("utilization", "digital"),
    "util_dram": _get("utilization", "dram"),
    "sim_events": _get("sim", "events"),
    "sim_wall_s": _get("sim", "wall_s"),
}
NONDETERMINISTIC = ("sim_wall_s",)  # the only column that differs between two runs of one point


def report_metrics(report: Mapping[str, Any]) -> dict[str, Any]:
    return {name: pick(report) for name, pick in METRICS.items()}


def columns_for(factor_keys: tuple[str, ...]) -> tuple[str, ...]:
    return (*FIXED_BEFORE, *factor_keys, *FIXED_AFTER, *METRICS)


def cell(value: Any) -> str:
    """One CSV cell: floats at full precision (repr round-trips), JSON for lists, errors on one line."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    if isinstance(value, (int, str)):
        return " ".join(str(value).split()) if isinstance(value, str) else str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _encode(cells: list[str]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(cells)
    return buf.getvalue().encode("utf-8")


def read_results(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The complete rows of a results.csv (a torn last line is ignored), as dicts of strings."""
    p = Path(path)
    if not p.exists():
        return []
    _, rows, _ = _parse(p.read_bytes())
    return rows


def _parse(data: bytes) -> tuple[list[str] | None, list[dict[str, str]], bool]:
    """(header, rows, clean): drops a torn last line, malformed rows and repeated ids; clean if none were."""
    end = data.rfind(b"\n") + 1
    clean = end == len(data)
    lines = list(csv.reader(io.StringIO(data[:end].decode("utf-8", errors="replace"))))
    if not lines:
        return None, [], clean
    header, rows, seen = lines[0], [], set()
    for line in lines[1:]:
        if len(line) != len(header) or not line[0] or line[0] in seen:
            clean = False
            continue
        seen.add(line[0])
        rows.append(dict(zip(header, line, strict=True)))
    return header, rows, clean


class ResultStore:
    """``DIR/results.csv`` of one sweep: ``open`` returns the finished rows by id, ``append`` adds one."""

    def __init__(self, out_dir: str | os.PathLike[str], columns: tuple[str, ...]) -> None:
        self.dir = Path(out_dir)
        self.path = self.dir / "results.csv"
        self.columns = columns
        self._fd: int | None = None
        self._lock: int | None = None

    def open(self) -> dict[str, dict[str, str]]:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(self.dir / ".sweep.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            self._lock = None
            raise SocError(f"{self.dir}: another sweep is writing to this directory; wait for it or use "
                           f"another --out") from None
        header, rows, clean = _parse(self.path.read_bytes()) if self.path.exists() else (None, [], True)
        if header is not None and tuple(header) != self.columns:
            self.close()
            raise SocError(f"{self.path}: columns {','.join(header)} differ from this sweep's "
                           f"({','.join(self.columns)}); the factors changed: use another --out")
        if header is None or not clean:
            self._rewrite(rows)  # a torn tail or a header-less file: repair once, atomically
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        return {row["id"]: row for row in rows}

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        with atomic_open(self.path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(self.columns)
            writer.writerows([row.get(c, "") for c in self.columns] for row in rows)

    def append(self, values: Mapping[str, Any]) -> None:
        """Append one row with a single write, then fsync: a crash leaves the row whole or absent."""
        if self._fd is None:
            raise RuntimeError("ResultStore.append before open")
        unknown = set(values) - set(self.columns)
        if unknown:
            raise KeyError(f"results.csv has no column {sorted(unknown)[0]!r}")
        data = _encode([cell(values.get(c)) for c in self.columns])
        written = os.write(self._fd, data)
        if written != len(data):  # only on a full disk; the torn row is dropped on the next open
            raise OSError(f"{self.path}: short write ({written} of {len(data)} bytes)")
        os.fsync(self._fd)

    def drop_failed(self) -> dict[str, dict[str, str]]:
        """Remove the rows of failed points (atomically) so that they run again; returns the rows kept."""
        rows = read_results(self.path)
        kept = {r["id"]: r for r in rows if r.get("status") == "ok"}
        if len(kept) != len(rows):
            if self._fd is not None:
                os.close(self._fd)
            self._rewrite(list(kept.values()))
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        return kept

    def close(self) -> None:
        for attr in ("_fd", "_lock"):
            fd = getattr(self, attr)
            if fd is not None:
                os.close(fd)  # closing the lock file releases the flock
                setattr(self, attr, None)

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
