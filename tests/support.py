"""Helpers shared by test modules (imported as ``support``; pytest puts tests/ on the path)."""

from __future__ import annotations

import contextlib
import io
import time
import tracemalloc
from typing import Iterator

from soc.faces.cli import main


def cli_one_line(argv: list[str]) -> str:
    """Run the CLI in-process; it must exit 2 with exactly one stderr line and no traceback; return that line."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    lines = err.getvalue().splitlines()
    assert code == 2, (argv, err.getvalue())
    assert len(lines) == 1 and lines[0].startswith("soc: error: "), err.getvalue()
    assert "Traceback" not in err.getvalue()
    return lines[0]


@contextlib.contextmanager
def measured() -> Iterator[dict[str, float]]:
    """Peak Python allocation (bytes) and wall time of the block: ``stats["peak"]``, ``stats["s"]``."""
    stats: dict[str, float] = {}
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        yield stats
    finally:
        stats["s"] = time.perf_counter() - t0
        stats["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
