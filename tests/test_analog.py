"""The analog core's non-idealities: rounding modes against a float64 reference, thermal noise as a fraction of
full scale, and the fixed pattern of a chip instance (same for every evaluation, different across chips)."""

from __future__ import annotations

import numpy as np
import pytest

from soc.attention.approx import approx_scores, chip_pattern, full_scale_lsb, key_slots, msb_quantize
from soc.attention.spec import CimQuantSpec, SpecError


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(2024)


def _bins(x: np.ndarray, bits: int, full_bits: int = 8) -> tuple[np.ndarray, float]:
    """Independent float64 reference: the MSB bin index of each element and the value of one MSB step."""
    qmax = 2 ** (full_bits - 1) - 1
    step = float(np.abs(x).max()) / qmax
    ints = np.clip(np.rint(x.astype(np.float64) / step), -qmax, qmax).astype(np.int64)
    return np.right_shift(ints, full_bits - bits), step * 2 ** (full_bits - bits)


def test_center_rounding_without_noise_is_the_float64_dot_of_bin_centres(rng):
    heads, kv_heads, seq_q, seq_k, dim, scale = 4, 2, 6, 9, 32, 0.17
    q = rng.standard_normal((heads, seq_q, dim)).astype(np.float32)
    k = rng.standard_normal((kv_heads, seq_k, dim)).astype(np.float32) * 2.5
    quant = CimQuantSpec(query_bits=4, key_bits=3, full_bits=8, rounding="center")
    approx, score_lsb = approx_scores(q, k, quant, scale)
    for h in range(heads):
        mq, lq = _bins(q[h], 4)
        mk, lk = _bins(k[h // 2], 3)
        # the full-precision codes of bin m span [2^s m - 1/2, 2^s (m+1) - 1/2): centre 2^s m + (2^s - 1)/2
        cq = mq + (2 ** 4 - 1) / 2 ** 5
        ck = mk + (2 ** 5 - 1) / 2 ** 6
        ref_dot = cq @ ck.T                                    # float64, exact (multiples of 2^-11)
        assert score_lsb[h] == pytest.approx(lq * lk * scale, rel=1e-6)
        expected = ref_dot.astype(np.float32) * np.float32(score_lsb[h])
        np.testing.assert_array_equal(approx[h], expected)
        assert np.array_equal(ref_dot.astype(np.float32).astype(np.float64), ref_dot)


def test_rounding_modes_on_a_hand_example():
    # 8-bit codes [127, -38, 25, -127, 0, 8]; 4 MSBs: floor = code >> 4, round = floor(code/16 + 1/2) saturated
    x = np.array([1.0, -0.3, 0.2, -1.0, 0.0, 8 / 127], dtype=np.float32)
    np.testing.assert_array_equal(msb_quantize(x, 4, 8, "floor")[0], [7, -3, 1, -8, 0, 0])
    np.testing.assert_array_equal(msb_quantize(x, 4, 8, "round")[0], [7, -2, 2, -8, 0, 1])
    np.testing.assert_array_equal(msb_quantize(x, 4, 8, "center")[0], np.array([7, -3, 1, -8, 0, 0]) + 15 / 32)
    # all bits kept: every mode is the 8-bit code itself
    for mode in ("floor", "round", "center"):
        np.testing.assert_array_equal(msb_quantize(x, 8, 8, mode)[0], [127, -38, 25, -127, 0, 8])


def test_center_and_round_remove_the_half_step_bias_of_floor(rng):
    q = rng.standard_normal((1, 256, 32)).astype(np.float32)
    k = rng.standard_normal((1, 256, 32)).astype(np.float32)
    exact = q[0].astype(np.float64) @ k[0].astype(np.float64).T
    err = {}
    for mode in ("floor", "round", "center"):
        a = approx_scores(q, k, CimQuantSpec(rounding=mode), 1.0).scores[0]
        err[mode] = float(np.sqrt(np.mean((a - exact) ** 2)))
    assert err["center"] < 0.8 * err["floor"] and err["round"] < 0.8 * err["floor"]


def test_noise_fraction_is_relative_to_the_arrays_full_scale():
    rng = np.random.default_rng(5)
    q = rng.standard_normal((2, 64, 64)).astype(np.float32)
    k = rng.standard_normal((2, 96, 64)).astype(np.float32)
    quant = CimQuantSpec(noise_fraction_fs=0.01, noise_sigma_lsb=3.0)
    assert full_scale_lsb(quant, 64) == 64 * 8 * 8
    clean = approx_scores(q, k, CimQuantSpec(), 1.0)
    noisy = approx_scores(q, k, quant, 1.0, np.random.default_rng(1))
    units = (noisy.scores - clean.scores) / clean.score_lsb[:, None, None]
    assert units.std() == pytest.approx(np.hypot(0.01 * 4096, 3.0), rel=0.03)


def _pattern_scores(quant: CimQuantSpec, seed: int, seq_k: int = 300, cores=None):
    # all-zero queries with floor rounding: every ideal dot product is 0, so what is left is the offset
    q = np.zeros((3, 4, 32), dtype=np.float32)
    k = np.random.default_rng(9).standard_normal((3, seq_k, 32)).astype(np.float32)
    return approx_scores(q, k, quant, 1.0, np.random.default_rng(seed), cores=cores)


def test_fixed_pattern_is_the_same_for_every_evaluation_of_one_chip():
    quant = CimQuantSpec(rounding="floor", offset_fraction_fs=0.01, gain_sigma_fraction=0.02, chip_seed=11)
    a, b = _pattern_scores(quant, seed=1), _pattern_scores(quant, seed=2)
    np.testing.assert_array_equal(a.scores, b.scores)
    slots = key_slots(quant, 32)
    assert slots == 128                                  # 32 x 4-bit key = one 128-row column per key
    gain, offset = chip_pattern(quant, 32)
    units = a.scores / a.score_lsb[:, None, None]
    col = np.arange(300) % slots
    np.testing.assert_allclose(units, np.broadcast_to(offset[col], units.shape), rtol=1e-5, atol=1e-4)
    assert offset.std() == pytest.approx(0.01 * full_scale_lsb(quant, 32), rel=0.25)
    # the pattern is per column: key j and key j + slots land in the same column
    np.testing.assert_array_equal(units[:, :, :44], units[:, :, slots:slots + 44])


def test_fixed_pattern_differs_across_chips_and_cores():
    base = dict(rounding="floor", offset_fraction_fs=0.01, gain_sigma_fraction=0.02)
    chip0 = _pattern_scores(CimQuantSpec(**base, chip_seed=0), seed=1).scores
    chip1 = _pattern_scores(CimQuantSpec(**base, chip_seed=1), seed=1).scores
    assert np.mean(chip0 != chip1) > 0.99
    out = _pattern_scores(CimQuantSpec(**base, chip_seed=0, cores=2), seed=1, cores=[0, 1, 0])
    two_cores = out.scores / out.score_lsb[:, None, None]  # in LSB: heads differ only in their units
    np.testing.assert_allclose(two_cores[0], two_cores[2], rtol=1e-6)
    assert np.mean(two_cores[0] != two_cores[1]) > 0.99
    g0, _ = chip_pattern(CimQuantSpec(**base, chip_seed=0), 32)
    g1, _ = chip_pattern(CimQuantSpec(**base, chip_seed=1), 32)
    assert not np.allclose(g0, g1)


def test_gain_error_scales_the_dot_product_per_column(rng):
    q = rng.standard_normal((1, 8, 32)).astype(np.float32)
    k = rng.standard_normal((1, 200, 32)).astype(np.float32)
    quant = CimQuantSpec(gain_sigma_fraction=0.05, chip_seed=3)
    ideal = approx_scores(q, k, CimQuantSpec(), 1.0).scores
    real = approx_scores(q, k, quant, 1.0).scores
    gain, _ = chip_pattern(quant, 32)
    col = np.arange(200) % key_slots(quant, 32)
    np.testing.assert_allclose(real, ideal * (1 + gain[col]), rtol=1e-5, atol=1e-5)
    # its size, measured from the scores alone: the per-column ratio real/ideal - 1 has the set sigma
    big = np.abs(ideal) > 1e-2
    ratio = (real[big] / ideal[big] - 1.0)
    per_col = np.array([np.median(ratio[np.broadcast_to(col == c, real.shape)[big]])
                        for c in np.unique(col) if np.any(np.broadcast_to(col == c, real.shape)[big])])
    assert per_col.std() == pytest.approx(0.05, rel=0.3)


def test_bad_analog_fields_name_the_field():
    with pytest.raises(SpecError, match="rounding"):
        CimQuantSpec(rounding="truncate")
    with pytest.raises(SpecError, match="noise_fraction_fs"):
        CimQuantSpec(noise_fraction_fs=-0.1)
    with pytest.raises(SpecError, match="chip_seed"):
        CimQuantSpec(chip_seed=-1)


def test_config_reaches_the_functional_model_and_defaults_carry_a_citation():
    from soc.config import load_config
    from soc.simulate import pruning_spec

    cfg = load_config("configs/hybrid65nm.yaml", ["cim.noise_fraction_fs=0.01", "cim.chip_seed=3",
                                                  "cim.rounding=floor"])
    quant = pruning_spec(cfg).quant
    assert (quant.noise_fraction_fs, quant.chip_seed, quant.rounding) == (0.01, 3, "floor")
    assert (quant.gain_sigma_fraction, quant.offset_fraction_fs) == (cfg.cim.gain_sigma_fraction,
                                                                    cfg.cim.offset_fraction_fs)
    for key in ("noise_fraction_fs", "gain_sigma_fraction", "offset_fraction_fs"):
        text = cfg.provenance[f"cim.{key}"]
        assert text.startswith(("published:", "derived:")) and "JSSC" in text, key


def test_noise_levels_are_a_unit_normal_to_its_16_bit_quantiles():
    from math import erf, sqrt

    from soc.attention.approx import NOISE_LEVELS, _noise_levels

    levels = _noise_levels().astype(np.float64)
    assert levels.size == NOISE_LEVELS and np.all(np.diff(levels) > 0)
    np.testing.assert_array_equal(levels, -levels[::-1])              # symmetric: zero mean
    assert np.mean(levels ** 2) == pytest.approx(1.0, abs=1e-6)         # unit variance
    # level i stands for the normal's probability slice i: the CDF at a level is within one slice of (i+1/2)/n
    # (the CDF from math.erf, not the inverse the levels were made with)
    cdf = np.array([0.5 * (1.0 + erf(x / sqrt(2.0))) for x in levels[::997]])
    np.testing.assert_allclose(cdf, (np.arange(NOISE_LEVELS)[::997] + 0.5) / NOISE_LEVELS, atol=1.5 / NOISE_LEVELS)
    assert levels[-1] == pytest.approx(4.32, abs=0.01)                 # beyond it, the tail the draw cannot reach


def test_noise_draw_is_normal_and_independent_of_the_blocks():
    from soc.attention.exact import row_blocks, valid_mask

    rng = np.random.default_rng(8)
    q = rng.standard_normal((2, 600, 32)).astype(np.float32)
    k = rng.standard_normal((2, 600, 32)).astype(np.float32)
    quant = CimQuantSpec(noise_fraction_fs=0.01)
    clean = approx_scores(q, k, CimQuantSpec(), 1.0)
    full = approx_scores(q, k, quant, 1.0, head_rngs=[np.random.default_rng([1, h]) for h in range(2)])
    units = ((full.scores - clean.scores) / clean.score_lsb[:, None, None]).ravel() / (0.01 * 64 * 32)
    assert abs(units.mean()) < 0.005 and units.std() == pytest.approx(1.0, rel=0.01)
    assert abs(np.mean(units ** 3)) < 0.01 and np.mean(units ** 4) == pytest.approx(3.0, rel=0.03)  # normal shape
    valid = valid_mask(600, 600, True)
    blocks = row_blocks(valid)
    assert len(blocks) == 3 and blocks[0] == (0, 256, 256)
    part = approx_scores(q, k, quant, 1.0, head_rngs=[np.random.default_rng([1, h]) for h in range(2)],
                         blocks=blocks)
    np.testing.assert_array_equal(part.scores[:, valid], full.scores[:, valid])
    outside = np.ones((600, 600), bool)
    for r0, r1, end in blocks:
        outside[r0:r1, :end] = False
    assert outside.sum() > 0.3 * outside.size and np.all(part.scores[:, outside] == -np.inf)


def test_one_block_short_of_the_last_key_reads_minus_inf_beyond_it():
    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, 5, 16)).astype(np.float32)
    k = rng.standard_normal((2, 20, 16)).astype(np.float32)
    quant = CimQuantSpec(noise_fraction_fs=0.01, gain_sigma_fraction=0.01)
    gens = lambda: [np.random.default_rng([2, h]) for h in range(2)]  # noqa: E731
    full = approx_scores(q, k, quant, 1.0, head_rngs=gens())
    part = approx_scores(q, k, quant, 1.0, head_rngs=gens(), blocks=[(0, 5, 8)])
    np.testing.assert_array_equal(part.scores[:, :, :8], full.scores[:, :, :8])
    assert np.all(part.scores[:, :, 8:] == -np.inf)
