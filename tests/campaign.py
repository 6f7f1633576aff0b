"""The bad-input campaign's harness: run `soc` in-process on one input and check the promise.

The promise, for every input: the command returns (no exception escapes, no hang), the exit status is the
expected one (0, or 2 for bad input), and a refusal is exactly one stderr line ``soc: error: ...`` (or
``soc CMD: error: ...`` from the argument parser) that names what is wrong, never a temporary file, never a
traceback. Every case run is counted per category so the campaign can report its totals.
"""

from __future__ import annotations

import collections
import contextlib
import io
import re
from typing import Iterable

from soc.faces.cli import main

COUNTS: collections.Counter[str] = collections.Counter()
FAILURES: list[str] = []
_ERROR = re.compile(r"^soc( [a-z-]+)*: error: \S")
_TEMP = re.compile(r"\.[^/\s]+\.\d+\.[^/\s]+\.tmp")


def run(argv: list[str]) -> tuple[int, str, str]:
    """``soc ARGV`` in this process: (exit status, stdout, stderr). SystemExit (argparse) is a status too."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return int(code), out.getvalue(), err.getvalue()


def check(category: str, argv: list[str], *, codes: Iterable[int] = (2,), names: Iterable[str] = ()
          ) -> tuple[int, str, str]:
    """Run one case and assert the promise; ``names``: strings of which the error line must hold one."""
    COUNTS[category] += 1
    code, out, err = run(argv)
    codes = tuple(codes)
    lines = [line for line in err.splitlines() if not line.startswith(("soc: warning:", "soc: replacing", "sweep "))]
    problem = None
    if "Traceback" in err or "Traceback" in out:
        problem = "a traceback"
    elif code not in codes:
        problem = f"exit {code}, expected {codes}"
    elif code == 2:
        if len(lines) != 1 or not _ERROR.match(lines[0]):
            problem = f"not one error line: {err!r}"
        elif _TEMP.search(lines[0]):
            problem = f"names a temporary file: {lines[0]}"
        elif len(lines[0]) > 5000:
            problem = f"a {len(lines[0])}-character line"
        else:
            wanted = tuple(names)
            if wanted and not any(w in lines[0] for w in wanted):
                problem = f"names none of {wanted}: {lines[0]}"
    if problem is not None:
        FAILURES.append(f"{category}: soc {' '.join(a[:80] for a in argv)}: {problem}")
        raise AssertionError(FAILURES[-1])
    return code, out, err
