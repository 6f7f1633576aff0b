"""What every sub-command of the `soc` command shares: its parser class, argument types, help strings, bundled
names, and the registry through which face modules add their sub-commands (so that they import this small
module, never the command line itself)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, NoReturn

from soc.errors import SocError

DEFAULT_TRACE_GLOB = "minilm-l6-*.npz"


def default_trace() -> Path:
    """The bundled real trace that `soc run` replays when no --trace is given."""
    from soc.config.loader import package_root

    folder = package_root() / "traces"
    found = sorted(folder.glob(DEFAULT_TRACE_GLOB)) or sorted(folder.glob("*.npz"))
    if not found:
        raise SocError(f"{folder}: no bundled trace found; pass --trace PATH")
    return found[0]


def trace_path(text: str | None) -> Path:
    """--trace as given, else a bundled trace (a name like minilm-l6-lighthouse, or traces/NAME.npz from
    any working directory)."""
    from soc.config.loader import resolve_bundled

    if text is None:
        return default_trace()
    return resolve_bundled(text, "traces", (".npz", ""))


def _short(path: Path | str) -> str:
    from soc.config.fields import PATH_CHARS, one_line

    return one_line(path, PATH_CHARS)


def output_dir(text: str, what: str = "--out") -> Path:
    """An output directory: refuse a file (or a name that looks like one: --out x.json) before any work."""
    out = Path(text)
    if out.suffix.lower() in (".json", ".csv", ".md", ".png", ".npz", ".yaml", ".yml", ".txt"):
        raise SocError(f"{what} {_short(out)}: expected a directory (the outputs are written inside it), "
                       f"got a file name; pass e.g. {what} {_short(out.with_suffix(''))}")
    if out.exists() and not out.is_dir():
        raise SocError(f"{what} {_short(out)}: exists and is not a directory")
    return out


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (`soc run: error: ... (soc run --help)`) instead of a usage wall."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        from soc.config.fields import one_line

        self.exit(2, f"{self.prog}: error: {one_line(message, 300)} (see {self.prog} --help)\n")


def _common(p: argparse.ArgumentParser, top: bool) -> None:
    """--quiet and --blas-threads, accepted before or after the sub-command."""
    default = {} if top else {"default": argparse.SUPPRESS}
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars on stderr (default: a bar "
                   "for long steps when stderr is a terminal)", **default)
    p.add_argument("--blas-threads", type=int, metavar="N", help="BLAS threads for numpy (default: 1; the "
                   "simulator is single-threaded and one thread is fastest on a shared machine)", **default)


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0 or value >= 2**63:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**63), got {text!r}")
    return value


def _pos_int(text: str) -> int:
    value = _nonneg_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _path_text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return text


def add_parser(sub: argparse._SubParsersAction, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A sub-command parser with the common options; other modules register theirs through this too."""
    p = sub.add_parser(name, **kwargs)
    _common(p, top=False)
    return p


SEED_HELP = "seed of the analog noise, an integer >= 0 (default: the config's seed)"
CONFIG_HELP = "SoC config: a YAML path or a bundled name (hybrid65nm, dense-digital, spatten-like, mem-*)"


_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def extra_command(fn: Callable[[argparse._SubParsersAction], None]) -> Callable:
    """Other modules (compare, sweep, paper, bench) add their sub-commands through this."""
    if fn not in _EXTRA_COMMANDS:
        _EXTRA_COMMANDS.append(fn)
    return fn
