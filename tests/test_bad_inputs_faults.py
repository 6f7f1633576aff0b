"""The campaign's faults that need a real process: signals at start-up, a killed sweep's workers, concurrent
writers of one new trace, FIFOs that would block a read forever, a reader that leaves the pipe, and progress
bars on a terminal (a pseudo-terminal) but not on a pipe or with --quiet."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import yaml

import campaign

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "traces" / "synth-tiny.npz"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}


def _soc(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "soc", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.parametrize("delay_s", [0.15, 0.3, 0.6])  # before ~0.05 s (more on a loaded machine) the interpreter itself starts
def test_ctrl_c_during_start_up_exits_130_without_a_traceback(tmp_path, delay_s):
    campaign.COUNTS["faults"] += 1
    # the bundled MiniLM trace: a run of more than a second, so every delay lands while it still works
    proc = _soc("run", "--out", str(tmp_path / "o"))
    time.sleep(delay_s)
    assert proc.poll() is None, "the run ended before the signal: the test needs a longer run"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    # a signal before the interpreter installs its handler kills it outright (-2); after: our 130
    assert proc.returncode in (130, -signal.SIGINT), (proc.returncode, err)
    if proc.returncode == 130:
        assert err.strip().splitlines()[-1] == "soc: interrupted"


def test_ctrl_c_inside_an_import_lock_callback_is_delivered_not_printed():
    """A SIGINT that lands in a callback Python cannot raise from (the import lock's weakref callback, where a
    start-up Ctrl-C once printed "Exception ignored ... Traceback" and was lost) reaches the main thread
    instead, as the KeyboardInterrupt the CLI turns into exit 130."""
    campaign.COUNTS["faults"] += 1
    code = ("import sys, time, weakref\n"
            "import soc.__main__ as cli\n"
            "sys.unraisablehook = cli._interrupt_in_callback  # as cli.run() installs it\n"
            "class Lock: pass\n"
            "def callback(_): raise KeyboardInterrupt\n"
            "lock = Lock(); ref = weakref.ref(lock, callback)\n"
            "try:\n"
            "    del lock\n"
            "    time.sleep(5)\n"
            "    print('lost')\n"
            "except KeyboardInterrupt:\n"
            "    print('delivered')\n")
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)
    assert (out.stdout.strip(), out.stderr) == ("delivered", "")


@pytest.mark.parametrize("fifo_as", ["config", "extends"])
def test_a_fifo_config_is_refused_without_blocking(tmp_path, fifo_as):
    campaign.COUNTS["faults"] += 1
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    cfg = fifo
    if fifo_as == "extends":
        cfg = tmp_path / "child.yaml"
        cfg.write_text(f"extends: {fifo}\n", encoding="utf-8")
    proc = _soc("run", "--config", str(cfg), "--trace", str(TINY))
    _, err = proc.communicate(timeout=60)  # a blocking read would hang here
    assert proc.returncode == 2 and err.strip() == f"soc: error: {fifo}: not a regular file, expected a YAML file"


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_die_with_a_killed_sweep(tmp_path, sig):
    campaign.COUNTS["faults"] += 1
    slower = {"workload": "minilm-l6", "seq_len": 128, "layers": 2}
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"base": "hybrid65nm", "traces": [slower],
                                     "factors": {"pruning.target_kept_fraction": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]}}),
                     encoding="utf-8")
    proc = _soc("sweep", str(sweep), "--out", str(tmp_path / "o"), "--workers", "2", "--no-plot")
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while time.monotonic() < deadline and proc.poll() is None:
        workers = [c for c in _children(proc.pid) if "soc" in _cmdline(c) or "multiprocessing" in _cmdline(c)]
        if len(workers) >= 2:
            break
        time.sleep(0.05)
    assert workers, "no worker processes started"
    proc.send_signal(sig)  # the driver only, as a supervisor or the OOM killer would
    proc.communicate(timeout=60)
    gone = time.monotonic() + 5
    while time.monotonic() < gone and any(_alive(w) for w in workers):
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "worker processes outlived the sweep"


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.parametrize("name", ["t.npz", "tdir"])
def test_two_concurrent_writers_of_one_new_trace_one_wins(tmp_path, name):
    campaign.COUNTS["faults"] += 1
    out = tmp_path / name
    args = ("trace", "synth", "--workload", "bert-base", "--seq-len", "256", "--layers", "2", "--out", str(out))
    procs = [_soc(*args) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], results
    loser = results[[p.returncode for p in procs].index(2)][1]
    assert "pass --force" in loser and str(out) in loser
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporaries left


def test_a_reader_that_leaves_the_pipe_ends_quietly():
    campaign.COUNTS["faults"] += 1
    proc = subprocess.run(f"{sys.executable} -m soc trace info {ROOT / 'traces' / 'minilm-l6-lighthouse.npz'} | head -2",
                          shell=True, env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.stderr == "" and len(proc.stdout.splitlines()) == 2


def _on_a_terminal(*args: str, timeout_s: float = 120) -> tuple[int, bytes, float | None]:
    """Run soc with stderr (and stdout) on a pseudo-terminal: (status, what the terminal got, seconds to the
    first progress bar or None)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))  # a new pty is 0x0: no bar fits
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "soc", *args], env=ENV, stdout=slave, stderr=slave)
    os.close(slave)
    seen, first = b"", None
    while True:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
            if first is None and b"|" in seen and b"step" in seen:
                first = time.monotonic() - t0
        if proc.poll() is not None and not ready:
            break
        if time.monotonic() - t0 > timeout_s:
            proc.kill()
            break
    os.close(master)
    return proc.wait(), seen, first


def test_progress_is_shown_on_a_terminal_within_two_seconds_and_not_on_a_pipe_or_with_quiet(tmp_path):
    campaign.COUNTS["faults"] += 3
    code, seen, first = _on_a_terminal("run", "--trace", str(TINY), "--out", str(tmp_path / "a"))
    assert code == 0 and b"loading config and trace" in seen, seen[-500:]
    assert first is not None and first < 2 + _start_up_s(), first  # start-up of python itself aside
    code, seen, _ = _on_a_terminal("run", "--quiet", "--trace", str(TINY), "--out", str(tmp_path / "b"))
    assert code == 0 and b"loading config" not in seen and b"\r" not in seen.replace(b"\r\n", b"")
    piped = subprocess.run([sys.executable, "-m", "soc", "run", "--trace", str(TINY), "--out", str(tmp_path / "c")],
                           env=ENV, capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and piped.stderr == ""


def _start_up_s() -> float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "import numpy"], env=ENV, check=True)
    return time.monotonic() - t0
