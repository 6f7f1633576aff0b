"""Fuzzing the config loader: every generated file or override loads, or ends in one ConfigError line.

Generated cases: random YAML trees, mutations of the paper's chip (wrong types, huge/zero/negative/NaN numbers,
deep nesting, unknown and missing keys), YAML-token soup and raw (non-UTF-8) bytes, anchor/alias documents
(billion laughs, recursive aliases) and ``--set`` overrides. For each: the outcome is a ``SocConfig`` (which
must then elaborate into a ``System`` or raise a ``SocError``) or a ``ConfigError`` whose message is one short
line naming the file or ``--set``; never another exception, and never more than ``MEMORY_BOUND_BYTES`` of
Python allocations (tracemalloc peak). Every tenth refusal is also run through ``soc.faces.cli.main``: exit 2 and one
stderr line ``soc: error: ...``, no traceback. Derandomized, no example database: CI sees the same cases.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soc.config import load_config
from soc.config.fields import MAX_FLOAT, MAX_INT, to_dict
from soc.config.loader import MAX_CONFIG_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES
from soc.config.schema import SocConfig
from soc.dataflow import Shape
from soc.errors import ConfigError, SocError
from soc.system import System
from support import cli_one_line as _cli_one_line
from support import measured

MEMORY_BOUND_BYTES = 32 * 2**20  # README "Limits": what loading any config may allocate
# any code point but surrogates; an explicit range spares hypothesis building a codec table (~15 s, cold)
CHARS = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=("Cs",))
SETTINGS = settings(deadline=None, derandomize=True, database=None, max_examples=120,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SHAPE = Shape(layers=1, heads=2, seq_q=64, seq_k=64, head_dim=32, kv_heads=2)
DEFAULTS = to_dict(SocConfig())


# --------------------------------------------------------------------------------------------- harness
@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A scratch folder with a tiny valid base config."""
    root = tmp_path_factory.mktemp("fuzz_config")
    (root / "base.yaml").write_text("name: base\n")
    return root


_refusals = {"n": 0}


def check_load(path: Path, overrides: tuple[str, ...] = (), tmp: Path | None = None):
    """Load ``path`` with ``overrides`` under tracemalloc; assert the contract; return the config or None."""
    try:
        with measured() as used:
            cfg = load_config(path, overrides)
    except ConfigError as exc:
        peak = used["peak"]
        msg = str(exc)
        assert msg and "\n" not in msg and "\r" not in msg and len(msg) < 2000, msg
        head = msg.split(": ", 1)[0]  # names the file (this one or one it extends) or the override
        assert head.startswith((str(path), "--set")) or Path(head).suffix in (".yaml", ".yml"), msg
        assert peak < MEMORY_BOUND_BYTES, (peak, msg)
        _refusals["n"] += 1
        if _refusals["n"] % 10 == 0 and not any("\0" in o for o in overrides):
            argv = ["run", "--config", str(path), *(f"--set={o}" for o in overrides),
                    "--out", str(tmp or path.parent)]
            assert _cli_one_line(argv) == f"soc: error: {msg}"
        return None
    assert used["peak"] < MEMORY_BOUND_BYTES, used
    assert isinstance(cfg, SocConfig)
    try:  # an accepted config elaborates into a SoC or is refused clearly: never another exception
        System(cfg, SHAPE)
    except SocError as exc:
        assert "\n" not in str(exc), str(exc)
    return cfg


def write_yaml(path: Path, doc) -> Path:
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------- strategies
def _keys_of(tree, out: set[str]) -> set[str]:
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.add(str(k))
            _keys_of(v, out)
    elif isinstance(tree, list):
        for v in tree:
            _keys_of(v, out)
    return out


KNOWN_KEYS = sorted(_keys_of(DEFAULTS, set()) | {"extends", "per_layer", "a", "b"})
EXTREME_NUMBERS = [0, -1, 1, -(2**31), 2**53, 2**53 + 1, 2**63, 10**30, -(10**30), 10**400,
                   0.0, -0.0, 5e-324, 1e-300, MAX_FLOAT, MAX_FLOAT * 10, 1e308, float("nan"), float("inf"),
                   float("-inf"), MAX_INT, 0.5, -0.5]
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(EXTREME_NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(CHARS, max_size=12),
    st.sampled_from(["", "fast", "threshold", "none", "charge_cim", "dram", "cim0", "yes", "1e3", "0x10",
                     "2001-01-01", "hybrid65nm", "assumed: x"]),
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(CHARS, max_size=8), st.integers(-3, 70), st.booleans())
trees = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(keys, kids, max_size=4),
                     max_leaves=16)


def _deep(value, depth: int):
    for _ in range(depth):
        value = [value]
    return value


def _paths(tree, prefix=()):
    """Every key path in the default config (dict keys and list indices)."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


PATHS = sorted(_paths(DEFAULTS), key=lambda p: tuple(map(str, p)))


# --------------------------------------------------------------------------------------------- the fuzz
@SETTINGS
@given(doc=st.one_of(trees, st.dictionaries(st.sampled_from(sorted(DEFAULTS)), trees, max_size=4)))
def test_random_yaml_trees(work, doc):
    cfg = check_load(write_yaml(work / "tree.yaml", doc))
    if cfg is not None:  # only an (effectively) empty mapping or valid sections load
        assert doc is None or isinstance(doc, dict)


@SETTINGS
@given(path=st.sampled_from(PATHS), action=st.sampled_from(["replace", "extreme", "nest", "delete", "unknown"]),
       value=trees, extreme=st.sampled_from(EXTREME_NUMBERS), depth=st.integers(1, 3 * MAX_YAML_DEPTH // 2))
def test_mutations_of_the_default_config(work, path, action, value, extreme, depth):
    """One change to an otherwise valid section: the error must name the key path that was changed."""
    doc = {path[0]: _copy(DEFAULTS[path[0]])}
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if action == "replace":
        parent[last] = value
    elif action == "extreme":
        parent[last] = extreme
    elif action == "nest":
        parent[last] = _deep(parent[last], depth)
    elif action == "delete":
        if isinstance(parent, dict):
            del parent[last]
        else:
            parent.pop(last)
    elif isinstance(parent, dict):
        parent["no_such_key"] = value
    else:
        parent.append(value)
    f = write_yaml(work / "mutant.yaml", doc)
    check_load(f)
    if action == "nest" and len(path) + 1 + depth + _height(_default_at(path)) > MAX_YAML_DEPTH:
        with pytest.raises(ConfigError, match=f"nested deeper than {MAX_YAML_DEPTH} levels"):
            load_config(f)
    elif action == "unknown" and isinstance(parent, dict) and not FREE_FORM & set(map(str, path)):
        with pytest.raises(ConfigError, match=r"no_such_key: unknown key \(expected one of: "):
            load_config(f)


FREE_FORM = {"provenance", "per_layer", "shared"}  # mappings whose keys are data, not schema fields


def _default_at(path):
    node = DEFAULTS
    for part in path:
        node = node[part]
    return node


def _height(value) -> int:
    """Levels below a YAML node: 0 for a scalar or an empty collection."""
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return max((1 + _height(c) for c in children), default=0)


def _copy(tree):
    return yaml.safe_load(yaml.safe_dump(tree))


TOKENS = [":", ": ", "- ", "[", "]", "{", "}", ",", "&a ", "*a", "&b ", "*b", "<<: ", "? ", "|\n", ">\n", "'", '"',
          "\n", "\n  ", "  ", "#", "%YAML 1.1\n", "---\n", "...\n", "!!binary ", "!!int ", "!!float ", "!!set ",
          "!!omap ", "!!timestamp ", "!!str ", "!!python/object/apply:os.system ", "!custom ", "~", "null",
          "name", "cim", "sram", "banks", "clock_ghz", "interconnect", "links", "extends", "per_layer",
          "provenance", "0", "-1", "1e400", "1.0e+400", "-1.0e+19", ".nan", ".inf", "2001-13-45", "2001-12-14", "0x1F",
          "0o17", "9" * 30, "\\0", "\t", "\x85", "\ufeff", "é", "\u2028"]


@SETTINGS
@given(parts=st.lists(st.sampled_from(TOKENS), max_size=40), raw=st.binary(max_size=64),
       use_raw=st.booleans())
def test_yaml_token_soup_and_raw_bytes(work, parts, raw, use_raw):
    f = work / "soup.yaml"
    f.write_bytes(raw if use_raw else "".join(parts).encode("utf-8", "surrogatepass"))
    check_load(f)


@SETTINGS
@given(levels=st.integers(1, 9), fanout=st.integers(1, 12), where=st.sampled_from(
    ["description", "name", "cim.clock_ghz", "interconnect.links", "interconnect.routers", "provenance",
     "pruning.per_layer", "sram", "extends"]), recursive=st.booleans())
def test_anchor_and_alias_documents(work, levels, fanout, where, recursive):
    """Billion-laughs chains of every size: small ones are ordinary (mistyped) values, big ones are refused
    from the composer's count of expanded nodes, in bounded time and memory."""
    chain = ["&l0 [" + ", ".join(["lol"] * fanout) + "]"]
    for i in range(1, levels):
        chain.append(f"&l{i} [" + ", ".join([f"*l{i - 1}"] * fanout) + "]")
    value = f"[{', '.join(chain)}]" if not recursive else "&r [1, *r]"
    expanded = sum(fanout ** i for i in range(1, levels + 1)) + levels + 1
    head, *rest = where.split(".")
    text = f"{head}: {value}\n" if not rest else f"{head}: {{{rest[0]}: {value}}}\n"
    f = work / "alias.yaml"
    f.write_text(text)
    t0 = time.perf_counter()
    check_load(f)
    assert time.perf_counter() - t0 < 5.0  # billion laughs: refused after ~2x10^4 node visits
    if recursive:
        with pytest.raises(ConfigError, match=r"line 1: recursive alias \*r"):
            load_config(f)
    elif expanded > MAX_YAML_NODES + 10:
        with pytest.raises(ConfigError, match=f"more than {MAX_YAML_NODES} values once aliases are expanded"):
            load_config(f)


DOTTED = sorted(".".join(map(str, p)) for p in PATHS)


@SETTINGS
@given(key=st.one_of(st.sampled_from(DOTTED), st.text(CHARS, max_size=12)), sep=st.sampled_from(["=", "=", "", "=="]),
       value=st.one_of(st.sampled_from([str(v) for v in EXTREME_NUMBERS]),
                       st.lists(st.sampled_from(TOKENS), max_size=8).map("".join), st.text(CHARS, max_size=12)))
def test_set_overrides(work, key, sep, value):
    check_load(work / "base.yaml", (f"{key}{sep}{value}",), tmp=work)


# --------------------------------------------------------------------------------------------- worst cases
def _bomb(levels: int = 9, fanout: int = 10) -> str:
    chain = ["&a0 [" + ",".join(["lol"] * fanout) + "]"]
    chain += [f"&a{i} [" + ",".join([f"*a{i - 1}"] * fanout) + "]" for i in range(1, levels)]
    return "description: [" + ", ".join(chain) + "]\n"


WORST = {
    "billion laughs (10^9 expanded values in 300 bytes)": (_bomb(), r"more than 20000 values once aliases"),
    "1 MiB of '['": ("name: " + "[" * (MAX_CONFIG_BYTES - 10), r"nested deeper than 64 levels"),
    "a list of 10^5 values": ("description: [" + "0," * 100_000 + "0]\n", r"more than 20000 values"),
    "a mapping of 4x10^4 keys": ("provenance: {" + ",".join(f"k{i}: v" for i in range(40_000)) + "}\n",
                                 r"more than 20000 values"),
    "larger than 1 MiB": ("description: '" + "x" * MAX_CONFIG_BYTES + "'\n", r"larger than 1048576 bytes"),
    "an integer of 5000 digits": ("seed: " + "9" * 5000 + "\n", r"a value cannot be read \(ValueError: Exceeds the limit"),
    "an integer past 2**53": ("seed: 9007199254740993\n", r"seed: expected an integer of magnitude at most 2\*\*53"),
    "an integer past float range": ("cim: {clock_ghz: " + "9" * 400 + "}\n", r"cim.clock_ghz: expected a finite"),
    "a float past 1e18": ("cim: {mac_pj: 1.0e+19}\n", r"cim.mac_pj: expected a number of magnitude at most 1e\+18"),
    "an impossible date": ("name: 2001-13-45\n", r"a value cannot be read \(ValueError: month must be in 1..12\)"),
    "a tagged non-integer": ("seed: !!int abc\n", r"a value cannot be read"),
    "a python tag": ("name: !!python/object/apply:os.system [ls]\n", r"line 1: could not determine a constructor"),
    "an unhashable key": ("? [a]\n: 1\n", r"found unhashable key"),
    "non-UTF-8 bytes": (b"name: \xff\xfe\x00\n", r"not UTF-8 text"),
    "a key with a newline": ('"sram\\nbanks": 1\n', r"sram\\nbanks: unknown key"),
    "extends with a NUL byte": ('extends: "a\\0b"\n', r"extends: expected a config path or name, got 'a\\x00b'"),
    "extends to a 5000-character name": ('extends: "' + "a" * 5000 + '.yaml"\n', r"extends: cannot resolve"),
    "extends to /dev/zero": ("extends: /dev/zero\n", r"/dev/zero: not a regular file"),
    "a top-level list": ("- 1\n- 2\n", r"expected a mapping at the top level, got list"),
    "a per_layer key '²'": ("pruning: {per_layer: {'²': {margin: 1}}}\n", r"per_layer.²: expected an integer"),
}


@pytest.mark.parametrize("case", sorted(WORST))
def test_worst_case_documents_are_refused_quickly_and_boundedly(work, case):
    text, message = WORST[case]
    f = work / "worst.yaml"
    f.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    with pytest.raises(ConfigError, match=message) as info, measured() as used:
        load_config(f)
    assert used["s"] < 10.0 and used["peak"] < MEMORY_BOUND_BYTES, used
    assert "\n" not in str(info.value) and len(str(info.value)) < 2000
    assert _cli_one_line(["run", "--config", str(f), "--out", str(work)]) == f"soc: error: {info.value}"


def test_config_from_a_pipe_or_device_is_read_boundedly(work):
    """/dev/zero reports size 0 and never ends: the loader reads at most MAX_CONFIG_BYTES + 1 bytes."""
    with pytest.raises(ConfigError, match=r"^/dev/zero: not a regular file"):
        load_config("/dev/zero")


def test_extends_chain_longer_than_the_limit(work):
    for i in range(20):
        (work / f"chain{i}.yaml").write_text(f"extends: chain{i + 1}.yaml\n")
    (work / "chain20.yaml").write_text("name: end\n")
    with pytest.raises(ConfigError, match=r"extends: cycle or chain deeper than 16"):
        load_config(work / "chain0.yaml")
    assert load_config(work / "chain10.yaml").name == "end"  # 10 levels are fine


@pytest.mark.parametrize("override, message", [
    ("interconnect.links.²=1", r"--set interconnect.links.²=1: ²: expected an index in 0..3"),
    ("interconnect.links.99999999999999999999=1", r"expected an index in 0..3"),
    ("name.x=1", r"--set name.x=1: name is not a section"),
    ("pruning.per_layer.0.rule=magic", r"pruning.per_layer.0.rule: expected one of"),
    ("name=2001-13-45", None),  # not a date YAML can build: kept as the text itself
    ("seed=" + "9" * 5000, r"seed: expected an integer"),
    ("sram.banks=&a [*a]", r"sram.banks: expected an integer"),
])
def test_override_edge_cases(work, override, message):
    if message is None:
        assert load_config(work / "base.yaml", [override]).name == "2001-13-45"
    else:
        with pytest.raises(ConfigError, match=message):
            load_config(work / "base.yaml", [override])


def test_exponent_floats_are_numbers(work):
    """YAML 1.1 reads 1e-3 as a string; the loader reads it as the number everyone means (YAML 1.2)."""
    (work / "exp.yaml").write_text("cim: {noise_sigma_lsb: 1e-3, clock_ghz: 2E0}\ndram: {latency_ns: 4e1}\n")
    cfg = load_config(work / "exp.yaml", ["digital.mac_pj=5e-1"])
    assert (cfg.cim.noise_sigma_lsb, cfg.cim.clock_ghz, cfg.dram.latency_ns, cfg.digital.mac_pj) == (
        0.001, 2.0, 40.0, 0.5)
    assert load_config(work / "base.yaml", ["name=1e3x"]).name == "1e3x"  # not a number: stays text

