"""Progress of long library calls (functional pass, event loop, sweeps, captures), shown only by a face.

Library code opens a task and advances it; nothing is printed and almost nothing is spent unless a face (the
CLI) has turned display on with :func:`shown`, which draws each task as a tqdm bar on stderr::

    with progress.task("functional pass", total=layers, unit="layer") as bar:
        for layer in range(layers):
            ...
            bar.advance()

Tasks nest (the inner bar is drawn below the outer one). The switch is a context variable, so it does not leak
into other threads or worker processes.
"""

from __future__ import annotations

import contextlib
import sys
from contextvars import ContextVar
from typing import Any, Callable, Iterator


class Task:
    """What a library call holds while it works: ``advance`` moves the bar, ``note`` says what it is doing."""

    __slots__ = ()

    def advance(self, n: float = 1) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


_NULL = Task()
_factory: ContextVar[Callable[[str, float | None, str], Task] | None] = ContextVar("soc_progress", default=None)


@contextlib.contextmanager
def task(name: str, total: float | None = None, unit: str = "it") -> Iterator[Task]:
    """A unit of work with ``total`` steps (None: unknown). A no-op unless a face shows progress."""
    factory = _factory.get()
    if factory is None:
        yield _NULL
        return
    bar = factory(name, total, unit)
    try:
        yield bar
    finally:
        bar.close()


def active() -> bool:
    """Whether someone shows progress (lets a caller skip building a costly description)."""
    return _factory.get() is not None


class _TqdmTask(Task):
    __slots__ = ("bar", "_on_close")

    def __init__(self, bar: Any, on_close: Callable[[], None]) -> None:
        self.bar = bar
        self._on_close = on_close

    def advance(self, n: float = 1) -> None:
        self.bar.update(n)

    def note(self, text: str) -> None:
        self.bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        self.bar.close()
        self._on_close()


@contextlib.contextmanager
def shown(enabled: bool = True, stream: Any = None) -> Iterator[None]:
    """Faces: draw every task opened inside as a bar on ``stream`` (stderr), if ``enabled`` and it is a
    terminal. Bars vanish when their task ends, so the command's own output stays clean."""
    stream = sys.stderr if stream is None else stream
    if not enabled or not getattr(stream, "isatty", lambda: False)():
        yield
        return
    from tqdm import tqdm

    depth = [0]

    def make(name: str, total: float | None, unit: str) -> Task:
        bar = tqdm(total=total, desc=name, unit=unit, file=stream, leave=False, position=depth[0],
                   mininterval=0.25, dynamic_ncols=True)
        depth[0] += 1

        def closed() -> None:
            depth[0] -= 1
        return _TqdmTask(bar, closed)

    token = _factory.set(make)
    try:
        yield
    finally:
        _factory.reset(token)
