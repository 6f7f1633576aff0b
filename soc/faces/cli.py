"""The `soc` command line. Bad input exits with status 2 and one line on stderr, never a traceback."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
import contextlib
from typing import Any, Iterator, Sequence

from soc.errors import SocError
from soc.faces.args import (_EXTRA_COMMANDS, CONFIG_HELP, SEED_HELP, Parser, _common, _nonneg_int,  # noqa: F401
                            _path_text, _pos_int, _short, add_parser, default_trace, extra_command, output_dir,
                            trace_path)

TIMELINE_FILTERS = ("timeline_window", "timeline_layers", "timeline_heads", "timeline_blocks",
                    "timeline_max_events")


def refuse_existing(path: str | Path, force: bool, what: str) -> None:
    """Traces are expensive data: an existing one is replaced only when asked (--force)."""
    p = Path(path)
    if (p.exists() or p.is_symlink()) and not force:
        raise SocError(f"{_short(p)}: {what} exists; pass --force to replace it")


def note_replacing(path: Path) -> None:
    """Reports are cheap to redo, so they are replaced, but never silently."""
    if path.exists():
        print(f"soc: replacing {path}", file=sys.stderr)


# --- run -----------------------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from soc import progress
    from soc.config import load_config
    from soc.io import write_json
    from soc.faces.report import summary_text

    out = output_dir(args.out)
    _check_timeline_flags(args)
    with progress.task("loading config and trace", total=2, unit="step") as bar:
        cfg = load_config(args.config, args.set or [])
        bar.advance()
        from soc.trace import load_trace

        trace = load_trace(trace_path(args.trace), mmap=True, max_bytes=trace_budget())
        check_replay_memory(trace, cfg)
        bar.advance()
    from soc.decode import decode_layout
    if decode_layout(trace) is not None:  # a decode trace: a prefill, then one simulation per step
        if args.workers is not None or args.scheduler is not None:
            raise SocError("--workers/--scheduler: not for a decode trace (its steps run one after another)")
        return _run_decode(args, cfg, trace, out)
    if (args.workers is not None or args.scheduler is not None) and (args.timeline or args.plots):
        raise SocError("--workers/--scheduler: a timeline or plots need the serial run; drop one of them")
    recorder, finish = _timeline(args)
    result = simulate_named(cfg, trace, config_name(args.config, args.set), recorder=recorder, seed=args.seed,
                            workers=args.workers, scheduler=args.scheduler)
    note_replacing(out / "report.json")
    write_json(out / "report.json", result.report)
    print(summary_text(result.report))
    print(f"  wrote          {out / 'report.json'}")
    if finish is not None:
        finish(result)
    return 0


def _run_decode(args: argparse.Namespace, cfg, trace, out: Path) -> int:
    from soc.decode import decode_summary, run_decode
    from soc.io import write_json
    from soc.faces.report import summary_text

    if args.timeline or args.plots:
        raise SocError("--timeline/--plots: not supported for a decode trace (one simulation per step)")
    report = run_decode(cfg, trace, seed=args.seed, batch=args.batch)
    note_replacing(out / "report.json")
    write_json(out / "report.json", report)
    print(f"soc: decode trace: prefill + {report['decode']['steps']} steps; the lines below are the last step")
    print(summary_text(report))
    print(decode_summary(report))
    print(f"  wrote          {out / 'report.json'}")
    return 0


def config_name(config: str | None, overrides: Sequence[str] | None) -> str:
    """How an error found while simulating names the config: the file, and the overrides if any."""
    name = _short(config or "hybrid65nm")
    keys = [o.split("=", 1)[0].strip() for o in overrides or ()]
    return name + (f" with --set {', '.join(keys)}" if keys else "")


def simulate_named(cfg: Any, trace: Any, name: str, **kwargs: Any) -> Any:
    """simulate(), with a configuration or wiring error raised while elaborating the SoC prefixed by the
    config it comes from (the blocks know their key, not the file)."""
    from soc.errors import ConfigError, WiringError
    from soc.simulate import simulate

    try:
        return simulate(cfg, trace, **kwargs)
    except (ConfigError, WiringError) as exc:
        if str(exc).startswith(name.split(" with ")[0]):
            raise
        raise type(exc)(f"{name}: {exc}") from None


def _check_timeline_flags(args: argparse.Namespace) -> None:
    """Timeline filters do nothing without a timeline or plots: say so instead of ignoring them."""
    given = [name for name in TIMELINE_FILTERS if getattr(args, name, None) is not None]
    if given and not getattr(args, "timeline", None) and not getattr(args, "plots", None):
        flag = "--" + given[0].replace("_", "-")
        raise SocError(f"{flag}: filters a timeline; add --timeline PATH.json or PATH.pftrace (or --plots DIR)")


def trace_budget() -> int:
    """Bytes a trace may take in memory when it cannot be mapped: half the physical memory, at most 8 GiB
    (a stable figure, so the refusal reads the same on every run)."""
    import os

    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        physical = 16 * 2**30
    return min(8 * 2**30, physical // 2)


def available_memory() -> int:
    """MemAvailable from /proc/meminfo (Linux), else physical memory, else 8 GiB."""
    import os

    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


#: The functional pass's peak per (query, key) pair of the head it works on: 8.6 B (an encoder) and 9.3 B
#: (causal) at seq 8192, one head (benchmarks/bench_pair_memory.py), rounded up
BYTES_PER_PAIR = 10
#: One layer's timing table while its run lasts (~0.2 KB a tile, soc.system)
TIMING_BYTES_PER_TILE = 200


def check_replay_memory(trace: Any, cfg: Any) -> None:
    """Refuse, before any work, a replay that cannot fit in memory: one head's score matrices in the functional
    pass, plus the whole run's chunk table and one layer's timing table."""
    from soc.attention.plan import live_chunks
    from soc.attention.table import CHUNK_ROW_BYTES

    m = trace.meta
    pairs = int(m.seq_q) * int(m.seq_len)
    k_tile = cfg.cim.key_tile(int(m.head_dim))  # < 1: the SoC is refused when built, naming the config
    per_head = live_chunks(int(m.seq_q), int(m.seq_len), bool(m.causal), int(m.query_offset),
                           cfg.dataflow.q_tile_rows, k_tile) if k_tile >= 1 else 0
    layer_tiles = per_head * int(m.heads)
    need_scores = pairs * BYTES_PER_PAIR
    need_tables = layer_tiles * (int(m.layers) * CHUNK_ROW_BYTES + TIMING_BYTES_PER_TILE)
    have = available_memory()
    if need_scores + need_tables > have:
        raise SocError(f"{_short(trace.path or '<trace>')}: a replay of {m.layers} layers x {m.heads} heads at seq "
                       f"{m.seq_len} needs about {(need_scores + need_tables) / 1e9:,.1f} GB ({need_scores / 1e9:,.1f} "
                       f"GB for one head's {m.seq_q} x {m.seq_len} score matrices, {need_tables / 1e9:,.1f} GB for "
                       f"the tables of {layer_tiles * int(m.layers):,} tiles), {have / 1e9:,.1f} GB is available; "
                       f"use a shorter trace or fewer layers")


def _timeline(args: argparse.Namespace):
    """Hook for timelines and plots; returns (recorder, finisher)."""
    from soc.recorder import OFF

    if not getattr(args, "timeline", None) and not getattr(args, "plots", None):
        return OFF, None
    try:
        from soc.timeline import attach
    except ImportError:
        raise SocError("--timeline/--plots: timeline support is not installed in this build") from None
    return attach(args)


# --- trace ---------------------------------------------------------------------------------------------------
def cmd_trace_synth(args: argparse.Namespace) -> int:
    from soc import progress
    from soc.faces.report import fmt_bytes
    from soc.trace import save_trace, synth_trace
    from soc.trace.synth import write_synth_trace
    from soc.trace.workload import load_workload

    refuse_existing(args.out, args.force, "a trace")
    spec = load_workload(args.workload)
    kwargs = dict(seq_len=args.seq_len, layers=args.layers, mode=args.mode, prompt=args.prompt,
                  generate=args.generate, seed=args.seed)
    if str(args.out).endswith(".npz"):
        with progress.task(f"synthesizing {args.workload}", total=None, unit="step"):
            trace = synth_trace(spec, **kwargs)
        with progress.task(f"writing {Path(args.out).name}", total=None, unit="file"):
            path = save_trace(args.out, trace.q, trace.k, trace.v, trace.meta, overwrite=args.force)
        m, nbytes = trace.meta, trace.nbytes()
    else:  # a directory: streamed layer by layer, one layer in memory (progress per layer)
        m = write_synth_trace(args.out, spec, overwrite=args.force, **kwargs)
        path = Path(args.out)
        nbytes = sum(f.stat().st_size for f in path.iterdir())
    shape = (f"{m.layers} layer{'s' if m.layers != 1 else ''} x {m.heads} heads, seq {m.seq_len}"
             + (f" ({m.query_offset} prompt + {m.seq_q} generated)" if m.query_offset else "")
             + f", head_dim {m.head_dim}")
    print(f"wrote {path}: synthetic {m.model}, {shape} ({fmt_bytes(nbytes)})")
    return 0


def cmd_trace_capture(args: argparse.Namespace) -> int:
    from soc import progress
    from soc.config.loader import resolve_bundled
    from soc.models import capture
    from soc.trace import save_trace

    refuse_existing(args.out, args.force, "a trace")
    text_path = resolve_bundled(args.text, "workloads/texts", ("", ".txt"))
    if not text_path.is_file():
        raise SocError(f"{_short(text_path)}: no such text file")
    try:
        with open(text_path, "rb") as fh:  # bounded: a text is a few KiB, /dev/zero is endless
            raw = fh.read(16 * 2**20 + 1)
    except OSError as exc:
        raise SocError(f"{_short(text_path)}: cannot read ({exc.strerror or exc})") from None
    if len(raw) > 16 * 2**20:
        raise SocError(f"{_short(text_path)}: larger than 16 MiB; not a text to capture")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SocError(f"{_short(text_path)}: not UTF-8 text") from None
    if args.mode != "decode" and (args.prompt is not None or args.generate is not None or args.teacher_forced):
        raise SocError("--prompt/--generate/--teacher-forced: only with --mode decode")
    if args.mode == "decode" and args.max_tokens is not None:
        raise SocError("--max-tokens: not with --mode decode (use --prompt N --generate G)")
    with progress.task(f"capturing {args.model}", total=None, unit="step"):
        if args.mode == "decode":
            from soc.models.capture import capture_decode

            q, k, v, meta = capture_decode(args.model, text, prompt_tokens=args.prompt,
                                           generate=args.generate or 1, teacher_forced=args.teacher_forced,
                                           source_name=text_path.name)
        else:
            q, k, v, meta = capture(args.model, text, max_tokens=args.max_tokens, source_name=text_path.name)
        path = save_trace(args.out, q, k, v, meta, overwrite=args.force)
    print(f"wrote {path}: {meta['model']}, {meta['tokens']} tokens, {meta['layers']} layers x "
          f"{meta['heads']} heads")
    return 0


def cmd_trace_info(args: argparse.Namespace) -> int:
    from soc.config.loader import resolve_bundled
    from soc.trace import trace_info

    print(compact_json(trace_info(resolve_bundled(args.path, "traces", (".npz", "")))))
    return 0


def compact_json(data: Any, indent: int = 2) -> str:
    """JSON with mappings indented and lists of numbers or strings on one line (token ids, shapes)."""
    import json

    def render(node: Any, depth: int) -> str:
        pad = " " * (indent * (depth + 1))
        if isinstance(node, dict) and node:
            items = [f"{pad}{json.dumps(str(k))}: {render(v, depth + 1)}" for k, v in node.items()]
            return "{\n" + ",\n".join(items) + "\n" + " " * (indent * depth) + "}"
        if isinstance(node, list) and any(isinstance(v, (dict, list)) for v in node):
            items = [f"{pad}{render(v, depth + 1)}" for v in node]
            return "[\n" + ",\n".join(items) + "\n" + " " * (indent * depth) + "]"
        return json.dumps(node)
    return render(data, 0)


# --- parser --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from soc import __version__

    p = Parser(prog="soc", description="Simulate a hybrid analog-CIM / digital attention SoC.")
    p.add_argument("--version", action="version", version=f"soc {__version__}")
    _common(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    r = add_parser(sub, "run", help="simulate one trace on one SoC config and write report.json",
                   description="Simulate one trace on one SoC config; print a summary, write DIR/report.json.")
    r.add_argument("--config", default="hybrid65nm", type=_path_text, help=CONFIG_HELP + " (default: hybrid65nm)")
    r.add_argument("--trace", default=None, type=_path_text,
                   help="workload trace: a .npz file, a trace directory or a bundled name (e.g. "
                        "smollm2-135m-bread) (default: traces/minilm-l6-lighthouse.npz)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. pruning.rule=margin (repeatable; default: none)")
    r.add_argument("--out", default="out", type=_path_text, metavar="DIR",
                   help="output directory; report.json is written inside it (default: out)")
    r.add_argument("--timeline", default=None, metavar="PATH",
                   help="write a timeline: PATH.json (Chrome trace) or PATH.pftrace (Perfetto) (default: none)")
    r.add_argument("--plots", default=None, metavar="DIR", help="write PNG plots into DIR (default: none)")
    r.add_argument("--timeline-window", default=None, metavar="START_US:END_US",
                   help="with --timeline: keep spans overlapping this window of simulated time, in "
                        "microseconds, either end optional (default: the whole run)")
    r.add_argument("--timeline-layers", default=None, metavar="LIST",
                   help="with --timeline: keep these layers' tiles, e.g. 0,2-3 (default: all)")
    r.add_argument("--timeline-heads", default=None, metavar="LIST",
                   help="with --timeline: keep these heads' tiles, e.g. 0-3 (default: all)")
    r.add_argument("--timeline-blocks", default=None, metavar="PATTERNS",
                   help="with --timeline: block/port glob patterns, e.g. 'cim*,digital*,dram*' (default: all)")
    r.add_argument("--timeline-max-events", type=_nonneg_int, default=None, metavar="N",
                   help="with --timeline: event budget, 0 for no limit; truncation is noted (default: 200000)")
    r.add_argument("--seed", type=_nonneg_int, default=None, help=SEED_HELP)
    r.add_argument("--batch", type=_pos_int, default=1, metavar="B",
                   help="decode traces: sequences decoded together (default: 1)")
    r.add_argument("--workers", type=_pos_int, default=None, metavar="N",
                   help="run the model's layers on N local processes; the report is the serial one, sim aside "
                        "(default: serial)")
    r.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the model's layers on the Dask cluster at ADDRESS, tcp://HOST:PORT (default: none)")
    r.set_defaults(func=cmd_run)

    t = sub.add_parser("trace", help="make or inspect workload traces", description="Make or inspect "
                       "workload traces (format soc.trace/1).")
    _common(t, top=False)
    tsub = t.add_subparsers(dest="trace_command", required=True, metavar="SUBCOMMAND", parser_class=Parser)
    s = add_parser(tsub, "synth", help="a synthetic trace from workloads/NAME.yaml",
                   description="A synthetic trace with realistic attention statistics, shaped as a workload.")
    s.add_argument("--workload", required=True, metavar="NAME",
                   help=f"workload shape, one of: {_workload_names()}")
    s.add_argument("--seq-len", type=_pos_int, default=None, metavar="N",
                   help="sequence length in tokens (default: the workload's)")
    s.add_argument("--layers", type=_pos_int, default=None, metavar="N",
                   help="keep the first N layers (default: all of the workload's)")
    s.add_argument("--mode", choices=("prefill", "decode"), default="prefill",
                   help="prefill: every position queries; decode: only the --generate last ones")
    s.add_argument("--prompt", type=_pos_int, default=None, metavar="P",
                   help="decode: prompt length in tokens (default: the workload's)")
    s.add_argument("--generate", type=_pos_int, default=None, metavar="G",
                   help="decode: generated tokens (default: the workload's)")
    s.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the generator, an integer >= 0 (default: 0)")
    s.add_argument("--out", required=True, type=_path_text, metavar="PATH",
                   help="PATH.npz for one file, any other path for a trace directory")
    s.add_argument("--force", action="store_true", help="replace an existing trace (default: refuse)")
    s.set_defaults(func=cmd_trace_synth)
    c = add_parser(tsub, "capture", help="a real trace from a pretrained model (needs the [models] extra)",
                   description="Run a pretrained model on a text and record its attention's q, k, v.")
    c.add_argument("--model", required=True, choices=("minilm-l6", "smollm2-135m"),
                   help="pretrained model (minilm-l6: 6x12 heads, bidirectional; smollm2-135m: 30x9, causal)")
    c.add_argument("--text", required=True, type=_path_text, metavar="FILE",
                   help="UTF-8 text file, e.g. workloads/texts/lighthouse.txt (bundled names resolve too)")
    c.add_argument("--max-tokens", type=_pos_int, default=None, metavar="N",
                   help="truncate to N tokens (default: refuse a text longer than the model's limit)")
    c.add_argument("--mode", choices=("prefill", "decode"), default="prefill",
                   help="decode: the model decodes with a KV cache after --prompt tokens for --generate steps "
                        "(default: prefill)")
    c.add_argument("--prompt", type=_pos_int, default=None, metavar="P",
                   help="decode: prompt tokens (default: the whole text)")
    c.add_argument("--generate", type=_pos_int, default=None, metavar="G", help="decode: steps (default: 1)")
    c.add_argument("--teacher-forced", action="store_true",
                   help="decode: feed the text's own next tokens instead of the greedy ones (default: greedy)")
    c.add_argument("--out", required=True, type=_path_text, metavar="PATH",
                   help="PATH.npz for one file, any other path for a trace directory")
    c.add_argument("--force", action="store_true", help="replace an existing trace (default: refuse)")
    c.set_defaults(func=cmd_trace_capture)
    i = add_parser(tsub, "info", help="shapes, metadata and size of a trace",
                   description="Shapes, metadata and size of a trace, from its headers (no data is read).")
    i.add_argument("path", type=_path_text, metavar="TRACE", help="a .npz file, a trace directory or a bundled "
                   "trace name")
    i.set_defaults(func=cmd_trace_info)

    for extra in _EXTRA_COMMANDS:
        extra(sub)
    return p


def _workload_names() -> str:
    try:
        from soc.trace.workload import list_workloads
        return ", ".join(list_workloads())
    except Exception:  # noqa: BLE001 - help text only
        return "see workloads/"


def _load_extras() -> None:
    """The sub-commands that live in their own face modules: importing one registers it (``extra_command``).
    Imported here, not at the top, so that `soc --help` and a Ctrl-C at start-up stay cheap."""
    from soc import sweep  # noqa: F401
    from soc.faces import bench, calibrate, compare, montecarlo, paper  # noqa: F401


@contextlib.contextmanager
def blas_threads(n: int | None) -> Iterator[None]:
    """One BLAS thread unless asked otherwise: the simulator is single-threaded, and OpenBLAS's threaded
    path made `soc paper` 234 s instead of 20 s on a loaded 2-core machine (issue 14)."""
    n = 1 if n is None else n
    if n < 1:
        raise SocError(f"--blas-threads: expected an integer >= 1, got {n}")
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # an install without the dependency: run with what numpy has
        yield
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield


def _error_line(exc: BaseException) -> str:
    from soc.config.fields import one_line

    return one_line(str(exc), 10_000)  # messages are bounded where they are made; this keeps them one line


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C while still importing or parsing: no traceback
        print("soc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `soc trace info ... | head`: the reader left; say nothing more
        _silence_stdout()
        return 141


def _silence_stdout() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


_PARSER: argparse.ArgumentParser | None = None


def _main(argv: Sequence[str] | None) -> int:
    from soc import progress

    global _PARSER
    if _PARSER is None:  # built once per process: in-process callers (tests, notebooks) call main often
        _load_extras()
        _PARSER = build_parser()
    args = _PARSER.parse_args(argv)
    try:
        with progress.shown(enabled=not args.quiet), blas_threads(args.blas_threads), _terminate_cleanly():
            return int(args.func(args) or 0)
    except SocError as exc:
        print(f"soc: error: {_hint(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("soc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise
    except MemoryError:
        print("soc: error: out of memory (a smaller trace, --layers or a directory trace with fewer "
              "positions?)", file=sys.stderr)
        return 2
    except OSError as exc:
        from soc.config.fields import PATH_CHARS, one_line

        name = getattr(exc, "filename", None)
        where = f"{one_line(name, PATH_CHARS)}: " if name else ""
        print(f"soc: error: {where}{exc.strerror or _error_line(exc)}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def _terminate_cleanly() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C (workers stopped, temporaries removed) and exits 143."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(143)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _hint(exc: SocError) -> str:
    """The error line, with a hint where the fix is not where the error shows."""
    text = _error_line(exc)
    if "has no link" in text and "interconnect.topology" not in text:
        text += ("; with several cim or digital blocks (cim.count, digital.count) set "
                 "interconnect.topology to bus, crossbar or mesh")
    return text


if __name__ == "__main__":
    sys.exit(main())
