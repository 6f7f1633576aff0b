"""The `soc` command line. Bad input exits with status 2 and one line on stderr, never a traceback."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

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


def refuse_existing(path: str | Path, force: bool, what: str) -> None:
    """Traces are expensive data: an existing one is replaced only when asked (--force)."""
    p = Path(path)
    if p.exists() and not force:
        raise SocError(f"{p}: {what} exists; pass --force to replace it")


def note_replacing(path: Path) -> None:
    """Reports are cheap to redo, so they are replaced, but never silently."""
    if path.exists():
        print(f"soc: replacing {path}", file=sys.stderr)


# --- run -----------------------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from soc.config import load_config
    from soc.io import write_json
    from soc.report import summary_text
    from soc.simulate import simulate
    from soc.trace import load_trace

    cfg = load_config(args.config, args.set or [])
    trace = load_trace(args.trace or default_trace(), mmap=True)
    from soc.decode import decode_layout
    if decode_layout(trace) is not None:  # a decode trace: a prefill, then one simulation per step
        if args.workers is not None or args.scheduler is not None:
            raise SocError("--workers/--scheduler: not for a decode trace (its steps run one after another)")
        return _run_decode(args, cfg, trace)
    if (args.workers is not None or args.scheduler is not None) and (args.timeline or args.plots):
        raise SocError("--workers/--scheduler: a timeline or plots need the serial run; drop one of them")
    recorder, finish = _timeline(args)
    result = simulate(cfg, trace, recorder=recorder, seed=args.seed, workers=args.workers, scheduler=args.scheduler)
    out = Path(args.out)
    note_replacing(out / "report.json")
    write_json(out / "report.json", result.report)
    print(summary_text(result.report))
    print(f"  wrote          {out / 'report.json'}")
    if finish is not None:
        finish(result)
    return 0


def _run_decode(args: argparse.Namespace, cfg, trace) -> int:
    from soc.decode import decode_summary, run_decode
    from soc.io import write_json
    from soc.report import summary_text

    if args.timeline or args.plots:
        raise SocError("--timeline/--plots: not supported for a decode trace (one simulation per step)")
    report = run_decode(cfg, trace, seed=args.seed, batch=args.batch)
    out = Path(args.out)
    note_replacing(out / "report.json")
    write_json(out / "report.json", report)
    print(f"soc: decode trace: prefill + {report['decode']['steps']} steps; the lines below are the last step")
    print(summary_text(report))
    print(decode_summary(report))
    print(f"  wrote          {out / 'report.json'}")
    return 0


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
    from soc.trace import save_trace, synth_trace
    from soc.trace.workload import load_workload

    refuse_existing(args.out, args.force, "a trace")
    spec = load_workload(args.workload)
    trace = synth_trace(spec, seq_len=args.seq_len, layers=args.layers, mode=args.mode, prompt=args.prompt,
                        generate=args.generate, seed=args.seed)
    path = save_trace(args.out, trace.q, trace.k, trace.v, trace.meta)
    print(f"wrote {path}: {trace.meta.model}, {trace.meta.layers} layers x {trace.meta.heads} heads, "
          f"seq {trace.meta.seq_len}, head_dim {trace.meta.head_dim} ({trace.nbytes() / 2**20:.1f} MiB)")
    return 0


def cmd_trace_capture(args: argparse.Namespace) -> int:
    from soc.models import capture
    from soc.trace import save_trace

    refuse_existing(args.out, args.force, "a trace")
    text_path = Path(args.text)
    if not text_path.is_file():
        raise SocError(f"{text_path}: no such text file")
    try:
        text = text_path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SocError(f"{text_path}: not UTF-8 text") from None
    if args.mode != "decode" and (args.prompt is not None or args.generate is not None or args.teacher_forced):
        raise SocError("--prompt/--generate/--teacher-forced: only with --mode decode")
    if args.mode == "decode" and args.max_tokens is not None:
        raise SocError("--max-tokens: not with --mode decode (use --prompt N --generate G)")
    if args.mode == "decode":
        from soc.models.capture import capture_decode

        q, k, v, meta = capture_decode(args.model, text, prompt_tokens=args.prompt, generate=args.generate or 1,
                                       teacher_forced=args.teacher_forced, source_name=text_path.name)
    else:
        q, k, v, meta = capture(args.model, text, max_tokens=args.max_tokens, source_name=text_path.name)
    path = save_trace(args.out, q, k, v, meta)
    print(f"wrote {path}: {meta['model']}, {meta['tokens']} tokens, {meta['layers']} layers x "
          f"{meta['heads']} heads")
    return 0


def cmd_trace_info(args: argparse.Namespace) -> int:
    import json

    from soc.trace import trace_info

    print(json.dumps(trace_info(args.path), indent=2))
    return 0


# --- parser --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="soc", description="Simulate a hybrid analog-CIM / digital attention SoC.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="simulate one trace on one SoC config and write report.json")
    r.add_argument("--config", default=None, help="SoC config YAML (default: configs/hybrid65nm.yaml)")
    r.add_argument("--trace", default=None, help="workload trace (.npz or directory; default: a bundled real trace)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    r.add_argument("--out", default="out", help="output directory (default: out/)")
    r.add_argument("--timeline", default=None, help="write a timeline (.json Chrome trace or .pftrace Perfetto)")
    r.add_argument("--plots", default=None, help="write PNG plots into this directory")
    r.add_argument("--timeline-window", default=None, metavar="START_US:END_US",
                   help="keep spans overlapping this window of simulated time, in microseconds (either end optional)")
    r.add_argument("--timeline-layers", default=None, metavar="LIST", help="keep these layers' tiles, e.g. 0,2-3")
    r.add_argument("--timeline-heads", default=None, metavar="LIST", help="keep these heads' tiles, e.g. 0-3")
    r.add_argument("--timeline-blocks", default=None, metavar="PATTERNS",
                   help="block/port glob patterns, e.g. 'cim*,digital*,dram*' (default: every block)")
    r.add_argument("--timeline-max-events", type=int, default=None, metavar="N",
                   help="event budget of the timeline (default 200000, 0: no limit); truncation is noted")
    r.add_argument("--seed", type=int, default=None, help="seed of the analog noise (default: the config's)")
    r.add_argument("--batch", type=int, default=1, help="decode traces: sequences decoded together (default 1)")
    r.add_argument("--workers", type=int, default=None, metavar="N",
                   help="run the model's layers on N local processes (same report as serial, sim aside)")
    r.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the model's layers on the Dask cluster at ADDRESS (tcp://HOST:PORT)")
    r.set_defaults(func=cmd_run)

    t = sub.add_parser("trace", help="make or inspect workload traces")
    tsub = t.add_subparsers(dest="trace_command", required=True)
    s = tsub.add_parser("synth", help="a synthetic trace from workloads/NAME.yaml")
    s.add_argument("--workload", required=True)
    s.add_argument("--seq-len", type=int, default=None)
    s.add_argument("--layers", type=int, default=None)
    s.add_argument("--mode", choices=("prefill", "decode"), default="prefill")
    s.add_argument("--prompt", type=int, default=None)
    s.add_argument("--generate", type=int, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.add_argument("--force", action="store_true", help="replace an existing trace")
    s.set_defaults(func=cmd_trace_synth)
    c = tsub.add_parser("capture", help="a real trace from a pretrained model (needs the [models] extra)")
    c.add_argument("--model", required=True, choices=("minilm-l6", "smollm2-135m"))
    c.add_argument("--text", required=True)
    c.add_argument("--max-tokens", type=int, default=None)
    c.add_argument("--mode", choices=("prefill", "decode"), default="prefill",
                   help="decode: the model decodes with a KV cache after --prompt tokens for --generate steps")
    c.add_argument("--prompt", type=int, default=None, help="decode: prompt tokens (default: the whole text)")
    c.add_argument("--generate", type=int, default=None, help="decode: steps (default 1)")
    c.add_argument("--teacher-forced", action="store_true",
                   help="decode: feed the text's own next tokens instead of the greedy ones")
    c.add_argument("--out", required=True)
    c.add_argument("--force", action="store_true", help="replace an existing trace")
    c.set_defaults(func=cmd_trace_capture)
    i = tsub.add_parser("info", help="shapes, metadata and size of a trace")
    i.add_argument("path")
    i.set_defaults(func=cmd_trace_info)

    for extra in _EXTRA_COMMANDS:
        extra(sub)
    return p


_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def extra_command(fn: Callable[[argparse._SubParsersAction], None]) -> Callable:
    """Other modules (compare, sweep, paper, bench) add their sub-commands through this."""
    _EXTRA_COMMANDS.append(fn)
    return fn


def _load_extras() -> None:
    import importlib

    for mod in ("soc.compare", "soc.sweep", "soc.paper", "soc.bench", "soc.calibrate"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


def main(argv: Sequence[str] | None = None) -> int:
    _load_extras()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SocError as exc:
        print(f"soc: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("soc: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"soc: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
