"""Synthetic workload traces whose attention looks like a real transformer's.

What real attention looks like (REFERENCE.md section 4; MiniLM and SmolLM2 captures; BERT/LLM studies):

* per query a few dominant keys and a heavy-tailed rest: the softmax of logits whose spread over the keys is
  about 1.2-2.3, so 95% of the mass sits in 20-45% of the keys (encoders) or 15-30% (decoders);
* decoders: token 0 becomes an attention sink (10-60% of the mass) after the first two layers, and nearby
  tokens are favoured (previous-token heads, a smooth recency decay);
* encoders: some heads attend to a neighbour (previous / next token), some to a few global tokens ([CLS],
  [SEP], punctuation), the rest by content;
* the first layers (and an encoder's last) are broad, the others sparse.

How the vectors are built (one layer, every head at once): the head dimension is split into a content
subspace, a positional subspace (low-frequency rotary-like sin/cos pairs) and two salience channels (a
global-token/sink channel, and a per-token "heavy hitter" score). The logit q·k·scale is the sum of one term
per subspace:

    s_ij = sigma_c,i * (c_ij + A * kappa(i - j) + eta * z_j) + lambda_i * g_j

Content keys are low-rank plus noise with log-normal norms. Each query mixes its few selected keys into a
random direction that drifts slowly along the sequence (adjacent queries share their survivors, as in real
models), and is scaled so that its content logits have exactly the spread chosen for it, with the selected
keys ``height`` spreads above the mean. Then, per KV head, channels are balanced, a random rotation mixes the
subspaces, per-channel scales give the keys outlier channels (the queries get the inverse) and a key bias adds
a per-query constant: none of this changes the attention, all of it matters to a quantizing CIM.
Deterministic per seed; a layer does not depend on how many layers are generated.

Calibration against real captures at 512 tokens (95%-mass key fraction; pruned fraction at margin 4 / 6
below the row max, exact scores): MiniLM 0.41 / 0.70 / 0.47 real vs 0.41 +- 0.02 / 0.82 / 0.54 synthetic
(seeds 0-5); SmolLM2 0.18-0.22 / 0.86-0.91 / 0.70-0.77 real vs 0.23 +- 0.01 / 0.90 / 0.75. At 207 / 256
tokens the committed real traces give 0.45 (MiniLM) and 0.26 (SmolLM2), synthetic 0.42 and 0.20. q and k
have the real traces' magnitudes (std 1.3-2.2).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from soc import progress
from soc.errors import ConfigError
from soc.trace.format import FORMAT, Trace, TraceMeta, save_trace_layers
from soc.trace.workload import WorkloadSpec, load_workload

GENERATOR = "soc.synth/1"


@dataclass(frozen=True)
class _Profile:
    """Calibration of one model family (see tests/test_trace_synth.py for the measured statistics)."""

    sigma_edge: float  # logit spread in the broad layers (first; last for encoders)
    sigma_mid: float  # logit spread in the sparse middle layers
    p_local: tuple[float, float]  # share of neighbour heads in broad / sparse layers
    p_global: tuple[float, float]  # share of global-token heads in broad / sparse layers (decoders: all)
    height: tuple[float, float]  # range of dominant-key heights in sparse layers, in logit-spread units
    local_height: tuple[float, float]  # range of a neighbour head's height on its neighbour
    global_mass: tuple[float, float]  # mass on the global tokens of a global head (decoders: see _sink_mass)
    recency: tuple[float, float]  # amplitude range of the smooth recency kernel, in logit-spread units
    outlier_channels: float  # log-normal spread of per-channel magnitudes (RoPE decoders have strong ones)


_PROFILES = {
    "encoder": _Profile(sigma_edge=1.2, sigma_mid=2.1, p_local=(0.35, 0.15), p_global=(0.15, 0.45),
                        height=(1.5, 3.0), local_height=(4.5, 5.5), global_mass=(0.05, 0.4),
                        recency=(0.3, 1.2),
                        outlier_channels=0.25),
    "decoder": _Profile(sigma_edge=1.2, sigma_mid=2.25, p_local=(0.3, 0.2), p_global=(1.0, 1.0),
                        height=(1.5, 3.0), local_height=(4.5, 5.5), global_mass=(0.0, 0.0),
                        recency=(0.3, 1.0),
                        outlier_channels=0.5),
}


def _sparsity(family: str, layer: int, layers: int) -> float:
    """0 for broad layers, 1 for sparse ones. Encoders: first and last layers broad (MiniLM, BERT);
    decoders: the first two layers broad, sparse from the third on (SmolLM2, LLaMA)."""
    t = layer / max(layers - 1, 1)
    if family == "encoder":
        return float(np.sin(np.pi * t) ** 0.5)
    return float((1.0 - np.exp(-layer / 1.5)) * (1.0 - 0.15 * t))


def _sink_mass(layer: int, layers: int) -> float:
    """Typical attention-sink mass of a decoder layer: none at first, ~15% early, ~50% in the later half."""
    t = layer / max(layers - 1, 1)
    return 0.01 if layer < 2 else (0.1 if t < 0.4 else 0.45)


def _split(head_dim: int) -> tuple[int, int]:
    """(frequency pairs, content dims) of the head dimension; the last 2 dims are the salience channels."""
    pairs = max(1, head_dim // 16)
    return pairs, head_dim - 2 * pairs - 2


def _smooth(noise: np.ndarray, window: int) -> np.ndarray:
    """Moving average along axis -2 (positions) via cumulative sums: a slowly drifting random direction."""
    c = np.cumsum(noise, axis=-2)
    c = np.concatenate([np.zeros_like(c[..., :1, :]), c], axis=-2)
    t = noise.shape[-2]
    hi = np.minimum(np.arange(t) + window // 2 + 1, t)
    lo = np.maximum(hi - window, 0)
    return c[..., hi, :] - c[..., lo, :]


def _sticky(rng: np.random.Generator, shape: tuple[int, ...], stay: float, draw: np.ndarray) -> np.ndarray:
    """Per position, keep the previous position's choice with probability ``stay``, else take ``draw``.

    ``draw`` has shape ``shape`` (positions on axis -2); returns draw[..., last change <= i, :]."""
    t = shape[-2]
    change = rng.random(shape) >= stay
    change[..., 0, :] = True
    idx = np.where(change, np.arange(t)[:, None], 0)
    last = np.maximum.accumulate(idx, axis=-2)
    return np.take_along_axis(draw, last, axis=-2)


_ROWS = 32  # GEMM row block; see _mm


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Batched a (B, T, n) @ b (B, n, p) in blocks of 32 rows. OpenBLAS runs GEMMs this small on one
    thread; its threaded path stalls for up to ~0.1-1.8 s per call when the 2 cores are shared (measured),
    which made a BERT-base trace take 4 s instead of 0.3 s."""
    bsz, t, n = a.shape
    pad = -t % _ROWS
    if pad:
        a = np.concatenate([a, np.zeros((bsz, pad, n), a.dtype)], axis=1)
    out = a.reshape(bsz, -1, _ROWS, n) @ b[:, None]
    return out.reshape(bsz, t + pad, -1)[:, :t]


def _balance(q: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale channel c of k by D_c and of q by 1/D_c (every q·k unchanged) so that both have the same RMS."""
    rq = np.sqrt((q ** 2).mean(axis=1, keepdims=True))
    rk = np.sqrt((k ** 2).mean(axis=1, keepdims=True))
    ok = (rq > 1e-12) & (rk > 1e-12)
    dia = np.where(ok, np.sqrt(np.where(ok, rq, 1.0) / np.where(ok, rk, 1.0)), 1.0).astype(np.float32)
    return q / dia, k * dia


def _normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def _rotations(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """n random orthogonal d x d matrices P·Cᵀ·D·C (C the orthonormal DCT-II, D random signs, P a random
    row permutation): dense mixing without LAPACK, whose threaded small-matrix calls crawl on a busy machine
    (a batched QR of 32 x 128 x 128 took 0.8-4 s instead of 0.04 s with the 2 cores shared)."""
    i = np.arange(d)
    c = np.sqrt(2.0 / d) * np.cos(np.pi * (i[None, :] + 0.5) * i[:, None] / d)
    c[0] /= np.sqrt(2.0)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n, 1, d))
    c32 = c.astype(np.float32)
    rot = _mm((c32.T[None] * signs).astype(np.float32), np.broadcast_to(c32, (n, d, d)))  # Cᵀ D C
    perm = np.argsort(rng.random((n, d)), axis=-1)
    return np.take_along_axis(rot, perm[:, :, None], axis=1)


@dataclass(frozen=True)
class _Sequence:
    """Token-level structure shared by every layer and head: positions of global tokens, token salience."""

    g: np.ndarray  # (T,) global-token strength: 1 for [CLS]/[SEP] or the sink, less for punctuation
    z: np.ndarray  # (T,) heavy-hitter salience of each token


def _sequence(rng: np.random.Generator, seq_len: int, family: str) -> _Sequence:
    g = np.zeros(seq_len)
    punct = rng.random(seq_len) < 1 / 12  # roughly one punctuation mark per sentence-ish span
    g[punct] = 0.35 if family == "encoder" else 0.3
    g[0] = 1.0  # [CLS] or the attention sink
    if family == "encoder":
        g[-1] = 1.0  # [SEP]
    return _Sequence(g=g, z=rng.standard_normal(seq_len))


def _layer(rng: np.random.Generator, spec: WorkloadSpec, layer: int, seq: _Sequence,
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q (H, T, d), k and v (KV, T, d) of one layer (float32) such that q·k/sqrt(d) are the logits."""
    prof = _PROFILES[spec.family]
    h_n, kv_n, d = spec.heads, spec.kv_heads, spec.head_dim
    t_n = seq.g.shape[0]
    group = h_n // kv_n
    kv_of = np.arange(h_n) // group
    pairs, d_c = _split(d)
    bump = _sparsity(spec.family, layer, spec.layers)
    causal = spec.causal
    pos = np.arange(t_n)

    # --- keys: content (low rank + noise, heavy-tailed norms, centred), positions, salience channels
    rank = max(2, d_c // 4)
    kc = (0.6 / math.sqrt(rank)) * _mm(_normal(rng, (kv_n, t_n, rank)), _normal(rng, (kv_n, rank, d_c)))
    kc += 0.8 * _normal(rng, (kv_n, t_n, d_c))
    kc *= np.exp(0.2 * _normal(rng, (kv_n, t_n, 1)))
    kc -= kc.mean(axis=1, keepdims=True)
    pad = np.concatenate([kc, np.zeros((kv_n, -t_n % _ROWS, d_c), kc.dtype)], axis=1).reshape(
        kv_n, -1, _ROWS, d_c)
    cov = (pad.transpose(0, 1, 3, 2) @ pad).sum(1) / t_n  # (KV, d_c, d_c): a direction u spreads sqrt(u C u)
    omega = (np.pi / 16) * (1 / 1024) ** (np.arange(pairs) / max(pairs - 1, 1))  # periods 32 .. 32K tokens
    phase = pos[:, None] * omega
    kpos = np.concatenate([np.cos(phase), np.sin(phase)], axis=-1).astype(np.float32)  # (T, 2F)
    z = 0.7 * seq.z + 0.7 * rng.standard_normal(t_n)  # token salience, partly shared across layers
    k: np.ndarray = np.concatenate([kc, np.broadcast_to(kpos, (kv_n, t_n, 2 * pairs)),
                                    np.broadcast_to(seq.g[:, None], (kv_n, t_n, 1)),
                                    np.broadcast_to(z[:, None], (kv_n, t_n, 1))], axis=-1, dtype=np.float32)

    # --- per-head character: logit spread, kind (neighbour / global-token / content), recency kernel
    sigma_h = ((prof.sigma_edge + (prof.sigma_mid - prof.sigma_edge) * bump)
               * np.exp(0.2 * rng.standard_normal(h_n)))
    sigma_i = sigma_h[:, None] * np.exp(0.15 * rng.standard_normal((h_n, t_n)))  # (H, T): total spread
    u = rng.random(h_n)
    p_local = prof.p_local[0] + (prof.p_local[1] - prof.p_local[0]) * bump
    p_global = prof.p_global[0] + (prof.p_global[1] - prof.p_global[0]) * bump
    is_local = u < p_local
    if spec.family == "decoder":
        is_global = np.ones(h_n, bool)
        f = np.clip(_sink_mass(layer, spec.layers) * np.exp(0.6 * rng.standard_normal((h_n, 1))), 0.002, 0.9)
    else:
        is_global = (u >= p_local) & (u < p_local + p_global)
        f = rng.uniform(*prof.global_mass, size=(h_n, 1))
    w = np.exp(-rng.uniform(0.0, 2.0, size=(h_n, 1)) * np.arange(pairs))  # weight of each frequency pair
    w /= w.sum(-1, keepdims=True)
    amp = rng.uniform(*prof.recency, size=(h_n, 1))
    kappa = amp * (w @ np.cos(omega[:, None] * pos[None, :]))  # (H, T): recency term at distance 0..T-1
    eta = rng.uniform(0.2, 0.5, size=(h_n, 1))
    sigma_c = sigma_i / np.sqrt(1.0 + eta ** 2 + kappa.var(axis=1, keepdims=True))  # content share of spread

    # --- dominant keys: up to 3 per query; neighbours for local heads, sticky content picks otherwise
    m = 3
    draw = rng.random((h_n, t_n, m))
    if causal:
        pick = np.floor((pos[None, :, None] + 1) * np.sqrt(draw)).astype(np.int64)  # skewed towards recent
    else:
        pick = np.floor(t_n * draw).astype(np.int64)
    pick = _sticky(rng, (h_n, t_n, m), 0.9, pick)  # adjacent queries often share a dominant key
    offsets = np.array([-1, 1, -2]) if not causal else np.array([-1, 0, -2])
    offsets = np.where(rng.random((h_n, 1, m)) < 0.5, offsets, offsets[[1, 0, 2]])
    pick = np.where(is_local[:, None, None], np.clip(pos[None, :, None] + offsets, 0, t_n - 1), pick)
    local = is_local[:, None, None]
    # neighbour heads are sharp in every layer (one or two offsets far above the rest, as in BERT/SmolLM2);
    # content picks grow with the layer's sparsity
    n_dom = np.where(local, 1 + (rng.random((h_n, 1, 1)) < 0.3), rng.integers(1, m + 1, size=(h_n, 1, 1)))
    height = np.where(local, rng.uniform(*prof.local_height, size=(h_n, t_n, m)) * np.array([1.0, 0.85, 0.7]),
                      (0.4 + 0.6 * bump) * rng.uniform(*prof.height, size=(h_n, t_n, m)))
    height *= np.arange(m) < n_dom
    height *= rng.random((h_n, t_n, m)) < np.where(local, 0.9, 0.8)  # some queries have fewer
    # a query direction cannot score high on many keys at once: cap the total squared height
    height *= np.minimum(1.0, np.sqrt(0.9 * d_c / np.maximum((height ** 2).sum(-1, keepdims=True), 1e-9)))

    # --- query content: a direction scoring `height` on the selected keys, then scaled to unit spread
    sel = kc[kv_of[:, None, None], pick]  # (H, T, m, d_c)
    beta = (height / np.maximum((sel ** 2).sum(-1), 1e-6) * np.sqrt(d_c)).astype(np.float32)
    r = _smooth(_normal(rng, (h_n, t_n, d_c)), 48)  # drifts slowly: neighbouring queries look alike
    r *= np.sqrt(d_c) / np.linalg.norm(r, axis=-1, keepdims=True)
    cov_h = cov[kv_of]
    for _ in range(4):  # keys are anisotropic: correct the mixing weights until the heights are right
        qc = r + np.einsum("htm,htmd->htd", beta, sel)
        spread2 = np.einsum("htd,htd->ht", _mm(qc, cov_h), qc)
        spread = np.sqrt(np.maximum(spread2, 1e-2 * (qc ** 2).sum(-1) / d_c + 1e-12))  # floor: 1-2 tokens
        got = np.einsum("htd,htmd->htm", qc, sel) / spread[..., None]
        beta *= np.where(height > 0, np.clip(height / np.maximum(got, 1e-3), 0.5, 3.0), 0.0)
    qc /= spread[..., None]  # unit spread of the content logits over the keys

    # --- global tokens / sink: logit lambda so that they hold about a fraction f of the mass
    if causal:
        visible = pos + 1.0
        bulk_mean = sigma_c * np.cumsum(kappa, axis=1) / visible  # mean recency logit over keys 0..i
    else:
        visible, bulk_mean = np.full(t_n, float(t_n)), np.zeros((1, 1))
    n_glob = 1.0 if causal else 2.0  # the sink / [CLS] and [SEP]
    lam = np.log(f / (1 - f)) + np.log(visible / n_glob) + 0.5 * sigma_i ** 2 + bulk_mean
    lam = np.where(is_global[:, None], np.maximum(lam, 0.0), 0.3)
    qpos = (sigma_c[..., None] * amp[..., None]) * np.concatenate([w, w], -1)[:, None, :] * kpos[None]
    parts = [sigma_c[..., None] * qc, qpos, lam[..., None], (sigma_c * eta)[..., None]]
    q: np.ndarray = np.concatenate(parts, axis=-1, dtype=np.float32)

    # --- balance, rotation, outlier channels, key bias: invisible to softmax, visible to a quantizer
    q = q.reshape(kv_n, group * t_n, d) * np.float32(math.sqrt(d))  # stored so that q·k·scale = logit
    q, k = _balance(q, k)  # channel by channel, so that no structural channel stands out before mixing
    rot = _rotations(rng, kv_n, d)
    chan = np.exp(prof.outlier_channels * _normal(rng, (kv_n, 1, d)))
    k = _mm(k, rot) * chan + 0.5 * _normal(rng, (kv_n, 1, d)) * chan
    q = _mm(q, rot) / chan
    gain = np.sqrt(q.std(axis=(1, 2), keepdims=True) / k.std(axis=(1, 2), keepdims=True))
    q, k = (q / gain).reshape(h_n, t_n, d), k * gain  # real q and k have similar magnitudes

    # --- values: low rank + noise; the sink's value is small, as in real decoders
    vr = max(2, d // 4)
    v = (_mm(_normal(rng, (kv_n, t_n, vr)), _normal(rng, (kv_n, vr, d))) / math.sqrt(vr)
         + 0.5 * _normal(rng, (kv_n, t_n, d))) * np.exp(0.3 * _normal(rng, (kv_n, 1, d)))
    if spec.family == "decoder":
        v[:, 0] *= 0.2
    return q, k, v


def _plan(spec: WorkloadSpec | str, seq_len: int | None, layers: int | None, mode: str, prompt: int | None,
          generate: int | None, seed: int, dtype: type | np.dtype) -> tuple[WorkloadSpec, TraceMeta, np.dtype]:
    """Validate the arguments of :func:`synth_trace`; the workload, the trace's metadata and its dtype."""
    if not isinstance(spec, WorkloadSpec):
        spec = load_workload(spec)
    where = f"synth_trace({spec.name})"

    def positive(name: str, value: object, default: int, hi: int) -> int:
        value = default if value is None else value
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= hi:
            raise ConfigError(f"{where}: {name}: expected an integer in [1, {hi}], got {value!r}")
        return int(value)

    n_layers = positive("layers", layers, spec.layers, spec.layers)
    if mode == "prefill":
        if prompt is not None or generate is not None:
            raise ConfigError(f"{where}: prompt/generate: only meaningful with mode='decode'")
        total = positive("seq_len", seq_len, spec.seq_len, spec.max_positions)
        offset = 0
    elif mode == "decode":
        if spec.family != "decoder":
            raise ConfigError(f"{where}: mode: 'decode' needs a decoder workload, {spec.name} is an "
                              f"{spec.family}")
        gen = positive("generate", generate, 1, spec.max_positions - 1)
        default_prompt = (spec.seq_len if seq_len is None else int(seq_len)) - gen
        offset = positive("prompt", prompt, max(default_prompt, 1), spec.max_positions - gen)
        total = offset + gen
        if seq_len is not None and seq_len != total:
            raise ConfigError(f"{where}: seq_len: expected prompt + generate = {total}, got {seq_len!r}")
    else:
        raise ConfigError(f"{where}: mode: expected 'prefill' or 'decode', got {mode!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"{where}: seed: expected a non-negative integer, got {seed!r}")
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float16), np.dtype(np.float32)):
        raise ConfigError(f"{where}: dtype: expected float16 or float32, got {dt}")
    if _split(spec.head_dim)[1] < 4:
        raise ConfigError(f"{where}: head_dim: expected >= 10 for the synthetic generator, "
                          f"got {spec.head_dim}")
    meta = TraceMeta(model=spec.name, source="synthetic", causal=spec.causal, layers=n_layers,
                     heads=spec.heads, kv_heads=spec.kv_heads, seq_len=total, head_dim=spec.head_dim,
                     scale=1.0 / math.sqrt(spec.head_dim), query_offset=offset, format=FORMAT,
                     extra={"synth": {"generator": GENERATOR, "workload": spec.name, "mode": mode,
                                      "seed": int(seed)}})
    return spec, meta, dt


def _layers(spec: WorkloadSpec, meta: TraceMeta, seed: int,
            dt: np.dtype) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(q, k, v) of each layer in turn, in the trace's dtype; one layer in memory at a time."""
    seq = _sequence(np.random.default_rng([int(seed), 0]), meta.seq_len, spec.family)
    with progress.task(f"trace synth {spec.name}", total=meta.layers, unit="layer") as bar:
        for layer in range(meta.layers):
            ql, kl, vl = _layer(np.random.default_rng([int(seed), 1, layer]), spec, layer, seq)
            yield ql[:, meta.query_offset:].astype(dt), kl.astype(dt), vl.astype(dt)
            bar.advance()


def synth_trace(spec: WorkloadSpec | str, *, seq_len: int | None = None, layers: int | None = None,
                mode: str = "prefill", prompt: int | None = None, generate: int | None = None, seed: int = 0,
                dtype: type | np.dtype = np.float16) -> Trace:
    """A synthetic trace of workload ``spec`` (a WorkloadSpec or a workload name / YAML path).

    ``mode="prefill"``: every position queries (seq_q = seq_len). ``mode="decode"`` (decoders only): a
    prompt of ``prompt`` tokens then ``generate`` generated ones (default 1); k/v cover all prompt+generate
    positions, q only the generated ones (query_offset = prompt); it equals the prefill trace of the same
    length with the prompt's queries dropped. ``layers`` keeps the first N layers (unchanged by N).
    For traces larger than memory, :func:`write_synth_trace` streams the layers into a directory."""
    spec, meta, dt = _plan(spec, seq_len, layers, mode, prompt, generate, seed, dtype)
    shapes = meta.expected_shapes()
    q, k, v = (np.empty(shapes[name], dt) for name in "qkv")
    for layer, (ql, kl, vl) in enumerate(_layers(spec, meta, seed, dt)):
        q[layer], k[layer], v[layer] = ql, kl, vl
    return Trace(q=q, k=k, v=v, meta=meta)


def write_synth_trace(path: str | os.PathLike[str], spec: WorkloadSpec | str, *, seq_len: int | None = None,
                      layers: int | None = None, mode: str = "prefill", prompt: int | None = None,
                      generate: int | None = None, seed: int = 0, dtype: type | np.dtype = np.float16,
                      overwrite: bool = True) -> TraceMeta:
    """Write the trace :func:`synth_trace` would return to the directory ``path``, one layer at a time (memory:
    one layer), so that it can be replayed memory-mapped. Same arrays, same metadata."""
    spec, meta, dt = _plan(spec, seq_len, layers, mode, prompt, generate, seed, dtype)
    save_trace_layers(path, meta, _layers(spec, meta, seed, dt), overwrite=overwrite)
    return meta
