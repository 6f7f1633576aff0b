"""The project's own bad-input campaign (issue 15): generated and explicit hostile inputs over configs, --set,
traces, sweeps, outputs, resource abuse and every sub-command, run in-process through ``soc.faces.cli.main``.

Every case must return (no hang), exit with the expected status and, when it refuses, print one line that
names the culprit (see ``campaign.check``). The last test reports the totals; the faults that need a real
process (signals, kill -9, concurrent writers, FIFOs that would block) are in test_bad_inputs_faults.py.
"""

from __future__ import annotations

import io
import json
import os
import time
import zipfile

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import campaign
from campaign import check
from soc.config.fields import field_docs
from soc.config.loader import package_root
from soc.config.schema import SocConfig
from soc.trace import load_trace, save_trace

ROOT = package_root()
TINY = ROOT / "traces" / "synth-tiny.npz"
MISSING = "/nonexistent/soc-campaign/t.npz"  # a trace that fails fast: valid configs end here, not in a run
KEYS = [row[0] for row in field_docs(SocConfig)]
FAST = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

values = st.one_of(
    st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
    st.text(max_size=12), st.sampled_from(["5e-324", "1e400", "-0", "0x10", "~", "[1, 2", "{a: 1}", "nan", "*a"]),
    st.lists(st.integers(-5, 5), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(KEYS).map(lambda k: k + "x"),
                 st.text(alphabet="abcdefghij._0123456789", min_size=1, max_size=20))


def _nested(key: str, value):
    node = value
    for part in reversed(key.split(".")):
        node = {part: node}
    return node


# --- configs ---------------------------------------------------------------------------------------------------
@FAST
@given(items=st.lists(st.tuples(keys, values), min_size=1, max_size=3))
def test_generated_configs(tmp_path_factory, items):
    """A child of the paper's chip with random keys and values at random depths."""
    folder = tmp_path_factory.mktemp("cfg")
    body = {"extends": "hybrid65nm"}
    for key, value in items:
        try:
            body.update(_nested(key, value))
        except TypeError:
            continue
    path = folder / "child.yaml"
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    check("configs", ["run", "--config", str(path), "--trace", MISSING, "--out", str(folder / "o")],
          names=(str(path), "hybrid65nm", MISSING))


@settings(FAST, max_examples=100)
@given(text=st.text(max_size=200))
def test_generated_config_text(tmp_path_factory, text):
    """Any text at all as a config file."""
    path = tmp_path_factory.mktemp("cfgtext") / "any.yaml"
    path.write_text(text, encoding="utf-8")
    check("configs", ["run", "--config", str(path), "--trace", MISSING], names=(str(path), MISSING))


# --- --set -----------------------------------------------------------------------------------------------------
@FAST
@given(key=keys, value=st.one_of(values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()),
                                   st.text(max_size=20)))
def test_generated_overrides(key, value):
    text = f"{key}={value}".replace("\n...", "").replace("\n", " ")
    check("--set", ["run", "--set", text, "--trace", MISSING], names=(f"--set {key.strip()}", "--set", MISSING))


# --- traces ----------------------------------------------------------------------------------------------------
_TINY_BYTES = TINY.read_bytes()


@settings(FAST, max_examples=150)
@given(flips=st.lists(st.tuples(st.integers(0, len(_TINY_BYTES) - 1), st.integers(0, 255)), max_size=4),
       cut=st.one_of(st.none(), st.integers(0, len(_TINY_BYTES))))
def test_generated_trace_bytes(tmp_path_factory, flips, cut):
    """The bundled tiny trace with flipped bytes or truncated: info reads headers, run loads it all."""
    data = bytearray(_TINY_BYTES)
    for at, byte in flips:
        data[at] = byte
    if cut is not None:
        data = data[:cut]
    path = tmp_path_factory.mktemp("tr") / "t.npz"
    path.write_bytes(bytes(data))
    check("traces", ["trace", "info", str(path)], codes=(0, 2), names=(str(path),))
    if flips or cut is not None:  # the loader checks every byte (CRC) and every value: mutants rarely run
        check("traces", ["run", "--trace", str(path), "--out", str(path.parent / "o"), "--quiet"], codes=(0, 2),
              names=(str(path),))


_META = json.loads(str(np.load(TINY)["meta"]))
meta_values = st.one_of(values, st.sampled_from([0, -1, 2**60, "capture", "synthetic", True, [], {}]))


@settings(FAST, max_examples=100)
@given(key=st.sampled_from(sorted(_META) + ["token_ids", "tokens", "text_sha256"]), value=meta_values)
def test_generated_trace_metadata(tmp_path_factory, key, value):
    """One metadata field replaced by a hostile value, arrays unchanged."""
    path = tmp_path_factory.mktemp("meta") / "t.npz"
    meta = {**_META, key: value}
    with np.load(TINY) as z:
        arrays = {n: z[n] for n in ("q", "k", "v")}
    try:
        text = json.dumps(meta)
    except (TypeError, ValueError):
        return
    np.savez(path, meta=np.array(text), **arrays)
    check("traces", ["run", "--trace", str(path), "--out", str(path.parent / "o")], codes=(0, 2),
          names=(str(path),))


# --- sweeps ----------------------------------------------------------------------------------------------------
sweep_traces = st.lists(st.one_of(st.just(MISSING), st.just(str(TINY)),
                                  st.fixed_dictionaries({"workload": st.sampled_from(["bert-base", "nope"]),
                                                         "seq_len": st.integers(-1, 10**6)})), max_size=2)


@settings(FAST, max_examples=150)
@given(base=st.sampled_from(["hybrid65nm", "nope", "bad.yaml", 3, None]), traces=sweep_traces,
       factors=st.dictionaries(keys, st.one_of(st.lists(values, max_size=3), values), max_size=2),
       mode=st.sampled_from(["product", "zip", "grid", 1]), seed=st.one_of(st.integers(-2, 5), st.text(max_size=2)),
       replicates=st.one_of(st.integers(-1, 2000), st.none()))
def test_generated_sweeps(tmp_path_factory, base, traces, factors, mode, seed, replicates):
    folder = tmp_path_factory.mktemp("sw")
    (folder / "bad.yaml").write_text("pruning: {rule: magic}\n", encoding="utf-8")
    body = {"base": base, "traces": [*traces, MISSING], "factors": factors, "mode": mode, "seed": seed}
    if replicates is not None:
        body["replicates"] = replicates
    path = folder / "s.yaml"
    try:
        path.write_text(yaml.safe_dump(body), encoding="utf-8")
    except yaml.YAMLError:
        return
    out = folder / "out"
    check("sweeps", ["sweep", str(path), "--out", str(out), "--executor", "serial", "--no-plot"],
          names=(str(path),))
    assert not out.exists(), "a refused sweep leaves nothing"


# --- every sub-command: generated argument lists ----------------------------------------------------------------
TOKENS = ["--config", "--trace", "--set", "--out", "--seed", "--timeline", "--timeline-window", "--timeline-layers",
          "--timeline-heads", "--timeline-blocks", "--timeline-max-events", "--plots", "--quiet", "--blas-threads",
          "--workload", "--seq-len", "--layers", "--mode", "--prompt", "--generate", "--force", "--model", "--text",
          "--max-tokens", "--executor", "--workers", "--scheduler", "--target-kept", "--target-mass", "--target-err",
          "--derive", "--no-baselines", "--no-plot", "-4", "0", "1e9", "nan", "", "x.json", "a=b", "9" * 30,
          "0-99999999999999", "nonexist*", "/dev/zero", "/dev/null", "-", "--", "\x00", "é", "-x"]
TAIL = {  # appended so that a valid-looking command still fails fast instead of running a simulation
    "run": ["--trace", MISSING], "compare": ["--trace", MISSING, "--out", "/tmp/soc-campaign-c"],
    "calibrate": ["--trace", MISSING], "paper": ["--config", "/nonexistent/c.yaml"],
    "bench": ["--seq-len", "0"], "sweep": ["/nonexistent/s.yaml", "--out", "/tmp/soc-campaign-s"],
    "trace synth": ["--workload", "nonexistent-workload", "--out", "/tmp/soc-campaign-t.npz"],
    "trace capture": ["--text", "/nonexistent/t.txt", "--out", "/tmp/soc-campaign-t.npz"],
    "trace info": ["/nonexistent/t.npz"], "": [],
}


@settings(FAST, max_examples=250)
@given(command=st.sampled_from(sorted(TAIL)), tokens=st.lists(st.sampled_from(TOKENS), max_size=6))
def test_generated_argument_lists(command, tokens):
    argv = [*command.split(), *tokens, *TAIL[command]]
    if "\x00" in argv and command == "":
        argv.remove("\x00")
    check("commands", argv, codes=(2,) if "--help" not in argv else (0, 2))


# --- outputs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("out", ["x.json", "report.csv", "/dev/null", "/proc/version"])
def test_outputs_that_are_files_are_refused_before_any_work(out):
    t0 = time.perf_counter()
    check("outputs", ["run", "--trace", str(TINY), "--out", out], names=(out,))
    assert time.perf_counter() - t0 < 2  # before loading and simulating


def test_output_in_a_read_only_directory_names_the_report_not_a_temporary(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who may write anywhere")
        check("outputs", ["run", "--trace", str(TINY), "--out", str(ro)], names=(str(ro / "report.json"),))
    finally:
        ro.chmod(0o755)


def test_a_long_path_is_one_bounded_line(tmp_path):
    long = "/".join(["d" * 200] * 25)  # 5,000 characters
    _, _, err = check("outputs", ["run", "--config", long + ".yaml", "--trace", str(TINY)], names=("d" * 50,))
    assert len(err) < 5000


# --- explicit items of issue 15 ---------------------------------------------------------------------------------
def test_set_errors_name_the_override_not_the_file():
    _, _, err = check("--set", ["run", "--set", "pruning.rule=magic", "--trace", MISSING],
                      names=("--set pruning.rule: expected one of",))
    assert "hybrid65nm.yaml" not in err


def test_cim_count_hints_at_the_topology():
    check("--set", ["run", "--set", "cim.count=4", "--trace", str(TINY), "--out", "/tmp/soc-campaign-o"],
          names=("interconnect.topology",))


@pytest.mark.parametrize("value", ["5e-324", "1e-300", "-1e-30"])
def test_subnormal_clocks_are_refused(value):
    check("--set", ["run", "--set", f"cim.clock_ghz={value}", "--trace", MISSING], names=("--set cim.clock_ghz",))


def test_a_bad_config_name_lists_the_bundled_ones():
    check("configs", ["run", "--config", "hybrid66nm", "--trace", MISSING], names=("bundled: dense-digital",))


def test_duplicate_yaml_keys_are_refused(tmp_path):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("extends: hybrid65nm\nseed: 1\nseed: 2\n", encoding="utf-8")
    check("configs", ["run", "--config", str(cfg), "--trace", MISSING], names=(f"{cfg}: line 3: key 'seed'",))


def test_an_unknown_key_in_a_parent_is_blamed_on_the_parent(tmp_path):
    (tmp_path / "parent.yaml").write_text("extends: hybrid65nm\ncim: {colour: red}\n", encoding="utf-8")
    (tmp_path / "child.yaml").write_text("extends: parent.yaml\nseed: 3\n", encoding="utf-8")
    check("configs", ["run", "--config", str(tmp_path / "child.yaml"), "--trace", MISSING],
          names=(f"{tmp_path / 'parent.yaml'}: cim.colour: unknown key",))


def test_plain_keys_are_not_called_an_alias_bomb(tmp_path):
    cfg = tmp_path / "many.yaml"
    cfg.write_text("".join(f"k{i}: {i}\n" for i in range(30_000)), encoding="utf-8")
    _, _, err = check("resources", ["run", "--config", str(cfg), "--trace", MISSING], names=(str(cfg),))
    assert "alias" not in err
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefg", "bcdefgh")), encoding="utf-8")
    check("resources", ["run", "--config", str(bomb), "--trace", MISSING], names=("alias bomb",))


def test_seed_and_empty_trace_are_refused():
    check("commands", ["run", "--seed", "-4"], names=("--seed",))
    check("commands", ["run", "--trace", ""], names=("--trace",))
    check("commands", ["calibrate", "--trace", str(TINY), "--target-kept", "0.3", "--seed", "-4"], names=("--seed",))


@pytest.mark.parametrize("flag,value", [("--target-kept", v) for v in ("0", "-1", "2", "nan", "inf")]
                         + [("--target-mass", "1.5"), ("--target-err", "-1"), ("--target-err", "nan")])
def test_calibrate_argument_ranges(flag, value):
    check("commands", ["calibrate", "--trace", str(TINY), flag, value], names=(flag,))


def test_calibrate_never_overwrites_its_base_or_an_ancestor(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("extends: hybrid65nm\nseed: 5\n", encoding="utf-8")
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\n", encoding="utf-8")
    before = (base.read_bytes(), child.read_bytes())
    for out in (base, child):
        check("outputs", ["calibrate", "--config", str(child), "--trace", str(TINY), "--target-kept", "0.3",
                          "--out", str(out)], names=("--out",))
    assert (base.read_bytes(), child.read_bytes()) == before


def test_timeline_filters_without_a_timeline_and_huge_ranges():
    for flag, value in [("--timeline-window", "1:2"), ("--timeline-layers", "0"), ("--timeline-blocks", "cim*"),
                        ("--timeline-heads", "1"), ("--timeline-max-events", "5")]:
        check("commands", ["run", "--trace", str(TINY), flag, value], names=(flag,))
    t0 = time.perf_counter()
    check("resources", ["run", "--trace", str(TINY), "--timeline", "/tmp/soc-campaign.json",
                        "--timeline-layers", "0-99999999999999"], names=("--timeline-layers",))
    assert time.perf_counter() - t0 < 5


def test_huge_sweeps_are_refused_at_once(tmp_path):
    for factors in ({"pruning.margin": list(range(1000)), "cim.seed": list(range(1000)), "cim.count": list(range(1000))},
                    {"pruning.threshold": list(range(4096)), "pruning.margin": list(range(1000))}):
        path = tmp_path / "huge.yaml"
        path.write_text(yaml.safe_dump({"base": "hybrid65nm", "traces": [str(TINY)], "factors": factors}),
                        encoding="utf-8")
        t0 = time.perf_counter()
        check("sweeps", ["sweep", str(path), "--out", str(tmp_path / "o")], names=("points, more than",))
        assert time.perf_counter() - t0 < 3


def test_a_sweep_with_an_invalid_base_leaves_nothing_and_blames_the_base(tmp_path):
    (tmp_path / "bad.yaml").write_text("pruning: {rule: magic}\n", encoding="utf-8")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": "bad.yaml", "traces": [str(TINY)],
                                    "factors": {"pruning.margin": [1, 2]}}), encoding="utf-8")
    check("sweeps", ["sweep", str(path), "--out", str(tmp_path / "o")], names=(f"{path}: base:",))
    assert not (tmp_path / "o").exists()


def test_duplicate_sweep_values_and_a_sweep_where_every_point_fails(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(yaml.safe_dump({"base": "hybrid65nm", "traces": [str(TINY)],
                                    "factors": {"dataflow.q_tile_rows": [16, 16.0]}}), encoding="utf-8")
    check("sweeps", ["sweep", str(path), "--out", str(tmp_path / "o")], names=("repeats the value",))
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    path = tmp_path / "fail.yaml"
    path.write_text(yaml.safe_dump({"base": "hybrid65nm", "traces": [str(broken)],
                                    "factors": {"pruning.margin": [1, 2]}}), encoding="utf-8")
    check("sweeps", ["sweep", str(path), "--out", str(tmp_path / "f"), "--executor", "serial", "--no-plot"],
          names=("every point failed",))


def test_a_zip_bomb_is_refused_boundedly(tmp_path):
    from support import measured

    meta = {**_META, "seq_len": 2**20, "layers": 1, "heads": 1, "kv_heads": 1, "head_dim": 40}
    path = tmp_path / "bomb.npz"
    zeros = np.zeros((1, 1, 2**20, 40), np.float16)  # 80 MiB of zeros: deflates ~1000:1
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("meta.npy", _npy(np.array(json.dumps(meta))))
        for name in ("q", "k", "v"):
            zf.writestr(f"{name}.npy", _npy(zeros))
    del zeros
    assert path.stat().st_size < 2e6
    with measured() as used:
        check("resources", ["run", "--trace", str(path)], names=("zip bomb",))
    assert used["peak"] < 32 * 2**20


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def test_a_huge_single_head_trace_is_refused_with_the_memory_it_needs(tmp_path):
    seq = 2**17
    a = np.zeros((1, 1, seq, 1), np.float16)
    meta = {"model": "toy", "source": "synthetic", "causal": False, "layers": 1, "heads": 1, "kv_heads": 1,
            "seq_len": seq, "head_dim": 1}
    save_trace(tmp_path / "long", a, a, a, meta)
    check("resources", ["run", "--trace", str(tmp_path / "long")], names=("score matrices",))


@pytest.mark.parametrize("causal,offset", [(False, 0), (True, 0), (True, 13)])
def test_the_memory_check_counts_the_tiles_the_run_keeps(monkeypatch, causal, offset):
    """The check's tile count equals the functional pass's chunk table, and a run whose tables would not fit
    is refused before any work with what they need."""
    from soc.attention.functional import run_functional
    from soc.attention.plan import live_chunks
    from soc.attention.spec import LayerRule, PruningSpec
    from soc.attention.table import CHUNK_ROW_BYTES
    from soc.errors import SocError
    from soc.faces import cli

    rng = np.random.default_rng(0)
    seq_q, seq_k = 50 - offset, 50
    q, k, v = (rng.standard_normal((2, 3, n, 8)).astype(np.float32) for n in (seq_q, seq_k, seq_k))
    func = run_functional(q, k, v, scale=0.3, causal=causal, query_offset=offset,
                          pruning=PruningSpec(LayerRule("threshold", target_kept_fraction=0.3)), q_tile=8, k_tile=16)
    assert live_chunks(seq_q, seq_k, causal, offset, 8, 16) * 3 * 2 == len(func.chunks["layer"])
    assert CHUNK_ROW_BYTES == sum(col.itemsize for col in func.chunks.values())

    trace = load_trace(TINY)
    monkeypatch.setattr(cli, "available_memory", lambda: 1000)
    with pytest.raises(SocError, match=r"GB for the tables of [\d,]+ tiles\), 0.0 GB is available"):
        cli.check_replay_memory(trace, SocConfig())


@pytest.mark.parametrize("change,match", [
    ({"token_ids": [30522] * 207}, "meta.token_ids[0]"), ({"token_ids": [-1] * 207}, "meta.token_ids[0]"),
    ({"heads": 6}, "meta.heads")])
def test_capture_metadata_is_checked_at_load(tmp_path, change, match):
    trace = load_trace(ROOT / "traces" / "minilm-l6-lighthouse.npz")
    meta = {**trace.meta.to_dict(), **change}
    q = trace.q[:, :meta["heads"]]
    k = trace.k[:, :meta.get("kv_heads", meta["heads"]) if "heads" not in change else meta["heads"]]
    meta["kv_heads"] = k.shape[1]
    path = tmp_path / "t.npz"
    save_trace(path, q, k, trace.v[:, :k.shape[1]], meta)
    t0 = time.perf_counter()
    check("traces", ["run", "--trace", str(path)], names=(match,))
    assert time.perf_counter() - t0 < 5  # at load, not after the simulation


def test_a_trace_member_symlinked_to_dev_zero(tmp_path):
    t = load_trace(TINY)
    d = save_trace(tmp_path / "td", t.q, t.k, t.v, t.meta)
    (d / "q.npy").unlink()
    (d / "q.npy").symlink_to("/dev/zero")
    check("traces", ["run", "--trace", str(d)], names=("q.npy is not a regular file",))
    check("traces", ["trace", "info", str(d)], names=("q.npy is not a regular file",))


def test_traces_are_created_exclusively_and_stale_temporaries_cleaned(tmp_path):
    out = tmp_path / "t.npz"
    stale = tmp_path / ".t.npz.999999999.abcd.tmp"  # left by a writer that was killed (pid not alive)
    stale.write_bytes(b"x" * 1000)
    check("outputs", ["trace", "synth", "--workload", "minilm-l6", "--seq-len", "16", "--layers", "1",
                      "--out", str(out)], codes=(0,))
    assert out.exists() and not stale.exists()
    check("outputs", ["trace", "synth", "--workload", "minilm-l6", "--seq-len", "16", "--layers", "1",
                      "--out", str(out)], names=("--force",))


def test_errors_found_while_building_the_soc_name_the_config_and_overrides():
    check("--set", ["run", "--trace", str(TINY), "--set", "sram.bank_bytes=90"],
          names=("hybrid65nm with --set sram.bank_bytes: sram:",))


def test_argparse_errors_are_one_line():
    for argv in (["run", "--nope"], ["trace"], [], ["sweep"], ["trace", "synth"], ["compare"]):
        check("commands", argv, names=("error:",))


def test_campaign_totals():
    """Runs last (file order): the campaign's size and result, as the report quotes them."""
    total = sum(campaign.COUNTS.values())
    if total < 900:
        pytest.skip(f"only part of the campaign ran ({total} cases)")
    print(f"\nbad-input campaign: {total} cases, {dict(sorted(campaign.COUNTS.items()))}, "
          f"{len(campaign.FAILURES)} broken promises")
    assert total >= 1000 and not campaign.FAILURES
