import numpy as np
import pytest
from datasketch import MinHash

from components.data.curate import first_seen
from components.data.minhash import SeenIndex, band_keys, bands_for, jaccard, signatures
from components.data.text import alpha_ratio, normalize, repeated_line_ratio, shingles


def test_normalize_folds_unicode_spaces_and_blank_lines():
    raw = "\ufb01le\u00a0name\r\n\r\n\r\n\r\n  two   spaces\there  \r\nend"
    assert normalize(raw) == "file name\n\ntwo spaces here\nend"


def test_quality_signals_by_hand():
    assert alpha_ratio("ab12") == 0.5
    assert alpha_ratio("") == 0.0
    assert repeated_line_ratio("a\nb\na\na") == pytest.approx(1 - 2 / 4)
    assert repeated_line_ratio("") == 0.0


def test_shingles_are_lowercased_word_trigrams():
    assert shingles("The quick brown fox") == ["the quick brown", "quick brown fox"]
    assert shingles("Two words") == ["two words"]


def test_minhash_estimates_jaccard_like_datasketch():
    a = "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat"
    b = "the quick brown fox jumps over the lazy dog while the cat sleeps on the cold mat"
    sa, sb = set(shingles(a)), set(shingles(b))
    true = len(sa & sb) / len(sa | sb)
    ours = jaccard(*signatures([a, b], num_perm=256))
    ref_a, ref_b = MinHash(num_perm=256), MinHash(num_perm=256)
    for s in sa:
        ref_a.update(s.encode())
    for s in sb:
        ref_b.update(s.encode())
    assert abs(ours - true) < 0.1
    assert abs(ours - ref_a.jaccard(ref_b)) < 0.15


def test_identical_and_disjoint_texts():
    sigs = signatures(["alpha beta gamma delta", "alpha beta gamma delta", "one two three four"], num_perm=64)
    assert jaccard(sigs[0], sigs[1]) == 1.0
    assert jaccard(sigs[0], sigs[2]) == 0.0


def test_bands_for_puts_the_s_curve_midpoint_near_the_threshold():
    for threshold in (0.5, 0.8, 0.9):
        bands = bands_for(threshold, 64)
        rows = 64 // bands
        midpoint = (1 - 0.5 ** (1 / bands)) ** (1 / rows)
        assert abs(midpoint - threshold) < 0.1


def test_band_keys_match_exactly_on_equal_bands():
    sigs = np.arange(16, dtype=np.uint64).reshape(2, 8)
    sigs[1] = sigs[0]
    sigs[1, 7] += 1  # differs in the last band only
    keys = band_keys(sigs, bands=4)
    assert keys.shape == (2, 4)
    assert list(keys[0, :3]) == list(keys[1, :3]) and keys[0, 3] != keys[1, 3]
    # the same values in a different band give a different key
    assert (
        band_keys(np.zeros((1, 8), dtype=np.uint64), 4)[0, 0] != band_keys(np.zeros((1, 8), dtype=np.uint64), 4)[0, 1]
    )


def test_first_seen_matches_earlier_batches_and_earlier_rows_of_the_same_batch(tmp_path):
    index = SeenIndex(tmp_path / "seen.db")
    assert first_seen(index, [[1, 2], [3]], [10, 11]) == [None, None]
    assert first_seen(index, [[9, 2], [5], [5, 7]], [12, 13, 14]) == [10, None, 13]
    assert index.lookup([7, 5, 1]) == {5: 13, 1: 10}, "a duplicate row's keys are not added"
    index.close()
