"""Atomic output: write to a temporary file beside the target, then rename.

A crash or an interrupt never leaves a half-written report, trace or CSV behind. Temporary names carry the
writer's process id (``.NAME.PID.XXXX.tmp``), so one left by a ``kill -9`` is removed by the next writer of the
same target once its process is gone. Errors name the target, never the temporary file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


def temp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


def clean_stale(target: Path) -> None:
    """Remove temporaries of ``target`` left by writers that died (their process no longer exists)."""
    pattern = re.compile(re.escape(f".{target.name}.") + r"(\d+)\.[^.]+\.(tmp|old)$")
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return
    for entry in entries:
        m = pattern.match(entry.name)
        if m is None or _alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _retarget(exc: OSError, target: Path) -> OSError:
    """The same error, naming the target instead of the temporary file."""
    new = type(exc)(exc.errno, exc.strerror or str(exc), str(target)) if exc.errno else exc
    return new


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", *, exclusive: bool = False,
                **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing and rename it over ``path`` on success.

    ``exclusive``: the target must not exist when the file is complete (a hard link, not a rename, so that
    of two writers racing for one new path exactly one wins and the other gets FileExistsError)."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(target)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(target), suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise _retarget(exc, target) from None
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            os.link(tmp, target)
            os.unlink(tmp)
        else:
            os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and getattr(exc, "filename", None) in (tmp, str(tmp)):
            raise _retarget(exc, target) from None
        if isinstance(exc, FileExistsError):
            raise _retarget(exc, target) from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=False, allow_nan=False)
        handle.write("\n")


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
