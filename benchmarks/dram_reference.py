"""Regenerate tests/data/dramsim3_reference.json: the banked DRAM streams run on DRAMsim3.

Needs a DRAMsim3 checkout built with cmake (``libdramsim3.so`` in its root) and a C++ compiler:

    git clone https://github.com/umd-memsys/DRAMsim3 /tmp/dramsim3 && cd /tmp/dramsim3 && mkdir build && \
        cd build && cmake .. -DCMAKE_BUILD_TYPE=Release && make -j2
    PYTHONPATH=$PWD python benchmarks/dram_reference.py --dramsim3 /tmp/dramsim3 [--compare]
    PYTHONPATH=$PWD python benchmarks/dram_reference.py --compare   # table from the stored data only

The streams come from tests/dram_streams.py (fixed seeds); the same closed-loop issue rule (lines in order, at
most ``WINDOW`` outstanding per channel) is implemented by the small C++ driver below against DRAMsim3's
library API (GetMemorySystem / WillAcceptTransaction / AddTransaction / ClockTick). DRAMsim3's configurations
are its stock ini files with the key overrides in ``DRAMSIM3`` (refresh pushed past the run, address mappings
equal to ours, LPDDR4 rebuilt from our preset's timing in tCK = 0.625 ns cycles). ``--compare`` also prints our
model beside it (the README table).
"""

from __future__ import annotations

import argparse
import configparser
import json
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import dram_streams as ds  # noqa: E402

NO_REFRESH = {"tREFI": "100000000", "tREFIb": "100000000"}

#: memory -> (stock DRAMsim3 ini, key overrides by section). Bank/rank/column fields follow our mappings.
DRAMSIM3: dict[str, tuple[str, dict[str, dict[str, str]]]] = {
    "ddr4": ("DDR4_8Gb_x8_3200.ini", {
        "timing": {"tCK": "0.625", **NO_REFRESH},
        "system": {"channel_size": "8192", "address_mapping": "rorabacobgch", "trans_queue_size": "32"}}),
    "ddr4_2rank": ("DDR4_8Gb_x8_3200.ini", {
        "timing": {"tCK": "0.625", **NO_REFRESH},
        "system": {"address_mapping": "rorabacobgch", "trans_queue_size": "32"}}),
    "hbm2": ("HBM2_8Gb_x128.ini", {
        "timing": dict(NO_REFRESH), "system": {"trans_queue_size": "32"}}),
    "lpddr4": ("LPDDR4_8Gb_x16_2400.ini", {
        "dram_structure": {"bankgroups": "1", "banks_per_group": "8", "rows": "65536", "columns": "1024",
                           "device_width": "16", "BL": "16"},
        "timing": {"tCK": "0.625", "CL": "28", "CWL": "14", "tRCD": "29", "tRP": "29", "tRAS": "68",
                   "tWR": "29", "tRTP": "12", "tWTR_S": "16", "tWTR_L": "16", "tRRD_S": "16", "tRRD_L": "16",
                   "tFAW": "64", "tCCD_S": "8", "tCCD_L": "8", **NO_REFRESH},
        # 32-byte bursts: a 64-byte line is two transactions, so the queue holds 64 of them (32 lines)
        "system": {"channel_size": "1024", "channels": "1", "bus_width": "16",
                   "address_mapping": "robarachbgco", "trans_queue_size": "64"}}),
}

DRIVER = r"""
#include <cstdio>
#include <cstdlib>
#include <map>
#include <vector>
#include "memory_system.h"
using namespace dramsim3;
struct Req { double t; uint64_t a; int w; long line; int ch; };
int main(int argc, char** argv) {
    const char* ini = argv[1]; const char* stream = argv[2]; int window = atoi(argv[3]);
    int ch_shift = atoi(argv[4]); int nch = atoi(argv[5]); double line_bytes = atof(argv[6]);
    std::vector<Req> reqs; FILE* f = fopen(stream, "r"); double t; unsigned long long a; int w; long ln;
    while (fscanf(f, "%lf %llu %d %ld", &t, &a, &w, &ln) == 4)
        reqs.push_back({t, (uint64_t)a, w, ln, (int)((a >> ch_shift) & (nch - 1))});
    fclose(f);
    long nlines = reqs.back().line + 1;
    std::vector<int> left(nlines, 0), outs(nch, 0), isw(nlines, 0); std::vector<double> issued(nlines, 0);
    for (auto& r : reqs) { left[r.line]++; isw[r.line] = r.w; }
    std::multimap<uint64_t, long> pend_r, pend_w;
    double now = 0, lat = 0, t_end = 0; long nread = 0, done = 0;
    auto finish = [&](std::multimap<uint64_t, long>& pend, uint64_t addr) {
        auto it = pend.find(addr); long line = it->second; pend.erase(it);
        if (--left[line] == 0) {
            done++; outs[(addr >> ch_shift) & (nch - 1)]--; if (now > t_end) t_end = now;
            if (!isw[line]) { lat += now - issued[line]; nread++; }
        }
    };
    MemorySystem* m = GetMemorySystem(ini, argv[7], [&](uint64_t x) { finish(pend_r, x); },
                                      [&](uint64_t x) { finish(pend_w, x); });
    double tck = m->GetTCK(); size_t i = 0; long cyc = 0, last = -1;
    while (done < nlines) {
        now = cyc * tck;
        while (i < reqs.size() && reqs[i].t <= now + 1e-9) {
            Req& r = reqs[i]; bool first = r.line != last;
            if (first && outs[r.ch] >= window) break;
            if (!m->WillAcceptTransaction(r.a, r.w)) break;
            m->AddTransaction(r.a, r.w);
            if (first) { outs[r.ch]++; issued[r.line] = now; last = r.line; }
            (r.w ? pend_w : pend_r).insert({r.a, r.line}); i++;
        }
        m->ClockTick(); cyc++;
    }
    printf("RESULT %.6f %.6f\n", line_bytes * nlines / t_end, nread ? lat / nread : 0.0);
    m->PrintStats();
    return 0;
}
"""


def build_driver(ds3: pathlib.Path, work: pathlib.Path) -> pathlib.Path:
    src, exe = work / "driver.cc", work / "driver"
    src.write_text(DRIVER)
    subprocess.run(["g++", "-O2", "-std=c++11", f"-I{ds3 / 'src'}", f"-I{ds3 / 'ext' / 'headers'}", str(src),
                    f"-L{ds3}", "-ldramsim3", f"-Wl,-rpath,{ds3}", "-o", str(exe)], check=True)
    return exe


def write_ini(ds3: pathlib.Path, memory: str, path: pathlib.Path) -> None:
    stock, over = DRAMSIM3[memory]
    cp = configparser.ConfigParser()
    cp.optionxform = str  # keep key case
    cp.read(ds3 / "configs" / stock)
    for section, keys in over.items():
        for k, v in keys.items():
            cp[section][k] = v
    with open(path, "w") as f:
        cp.write(f)


def run_dramsim3(exe, ini, memory, name, work) -> dict:
    spec = ds.resolve_spec(ds.config(memory))
    cp = configparser.ConfigParser()
    cp.read(ini)
    tx_bytes = int(cp["system"]["bus_width"]) // 8 * int(cp["dram_structure"]["BL"])  # one transaction
    per_line = ds.LINE_BYTES // tx_bytes
    stream_file = work / f"{memory}_{name}.txt"
    with open(stream_file, "w") as f:
        for i, line in enumerate(ds.stream(memory, name)):
            for k in range(per_line):
                f.write(f"{line.arrival_ns:.3f} {line.address + k * tx_bytes} {int(line.write)} {i}\n")
    out = work / f"out_{memory}_{name}"
    out.mkdir(exist_ok=True)
    proc = subprocess.run([str(exe), str(ini), str(stream_file), str(ds.WINDOW), str(ds.channel_shift(spec)),
                           str(spec.channels), str(ds.LINE_BYTES), str(out)],
                          check=True, capture_output=True, text=True)
    bw, lat = map(float, re.search(r"RESULT (\S+) (\S+)", proc.stdout).groups())
    stats = json.loads((out / "dramsim3.json").read_text())
    chans = list(stats.values())
    hits = sum(c.get("num_read_row_hits", 0) + c.get("num_write_row_hits", 0) for c in chans)
    cmds = sum(c.get("num_read_cmds", 0) + c.get("num_write_cmds", 0) for c in chans)
    return {"bandwidth_gb_per_s": round(bw, 4), "mean_read_latency_ns": round(lat, 3),
            "row_hit_rate": round(hits / cmds, 4) if cmds else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dramsim3", type=pathlib.Path,
                    help="built DRAMsim3 checkout (omit with --compare: print the table from the stored data)")
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "tests" / "data" / "dramsim3_reference.json")
    ap.add_argument("--compare", action="store_true", help="also run our model and print the table")
    args = ap.parse_args()
    if args.dramsim3 is None:
        if not args.compare:
            ap.error("--dramsim3 is required unless --compare reads the stored data")
        print(table(json.loads(args.out.read_text())["results"]))
        return
    ds3 = args.dramsim3.resolve()
    commit = subprocess.run(["git", "-C", str(ds3), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        exe = build_driver(ds3, work)
        for memory in ds.MEMORIES:
            ini = work / f"{memory}.ini"
            write_ini(ds3, memory, ini)
            results[memory] = {name: run_dramsim3(exe, ini, memory, name, work) for name in ds.STREAMS}
    doc = {
        "about": "DRAMsim3 on the streams of tests/dram_streams.py (closed loop, lines in order, at most "
                 f"{ds.WINDOW} lines outstanding per channel, {ds.LINES} lines of {ds.LINE_BYTES} B per stream); "
                 "bandwidth = all lines' bytes / last completion; latency = mean over reads, issue to data. "
                 "Regenerate with benchmarks/dram_reference.py.",
        "dramsim3_commit": commit,
        "dramsim3_configs": {m: {"stock": s, "overrides": o} for m, (s, o) in DRAMSIM3.items()},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    if args.compare:
        print(table(results))


def table(results: dict) -> str:
    rows = ["| memory | stream | bandwidth GB/s, ours / DRAMsim3 | mean read latency ns, ours / DRAMsim3 | "
            "row hits, ours / DRAMsim3 |", "|---|---|---|---|---|"]
    for memory, per in results.items():
        for name, ref in per.items():
            o = ds.run_ours(memory, ds.stream(memory, name))
            lat = (f"{o['mean_read_latency_ns']:.1f} / {ref['mean_read_latency_ns']:.1f}"
                   if ref["mean_read_latency_ns"] else "-")
            rows.append(f"| {memory} | {name} | {o['bandwidth_gb_per_s']:.2f} / {ref['bandwidth_gb_per_s']:.2f} "
                        f"({o['bandwidth_gb_per_s'] / ref['bandwidth_gb_per_s']:.2f}) | {lat} | "
                        f"{o['row_hit_rate']:.2f} / {ref['row_hit_rate']:.2f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
