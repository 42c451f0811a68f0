import random
from collections import Counter

import pytest

from integration.perf.keys import (
    Latest,
    ScrambledZipfian,
    Uniform,
    ValueShape,
    Zipfian,
    record_key,
    sorted_key,
)

DRAWS = 50_000


def _counts(gen, n: int = DRAWS) -> Counter[int]:
    return Counter(gen.next() for _ in range(n))


def test_zipfian_stays_in_range_and_favours_the_first_items() -> None:
    counts = _counts(Zipfian(1000, rng=random.Random(1)))
    assert min(counts) >= 0 and max(counts) < 1000
    assert counts.most_common(1)[0][0] == 0
    top_1_percent = sum(counts[i] for i in range(10))
    assert top_1_percent / DRAWS > 0.3  # theta 0.99: the hot 1% takes about 39%
    assert counts[0] > 10 * counts[100]


def test_scrambled_zipfian_is_as_skewed_but_spreads_the_hot_keys() -> None:
    counts = _counts(ScrambledZipfian(1000, rng=random.Random(2)))
    hot = [item for item, _ in counts.most_common(10)]
    assert sum(counts[i] for i in hot) / DRAWS > 0.3
    assert max(hot) - min(hot) > 100


def test_uniform_is_flat() -> None:
    counts = _counts(Uniform(100, rng=random.Random(3)))
    assert max(counts.values()) < 1.5 * DRAWS / 100


def test_latest_favours_the_newest_records() -> None:
    newest = [999]
    counts = _counts(Latest(1000, lambda: newest[0], rng=random.Random(4)))
    assert counts.most_common(1)[0][0] == 999
    assert sum(c for item, c in counts.items() if item >= 990) / DRAWS > 0.3
    newest[0] = 1500
    assert max(_counts(Latest(1000, lambda: newest[0], rng=random.Random(5)), 1000)) <= 1500


def test_keys_have_their_documented_shapes() -> None:
    assert len(sorted_key(5)) == 16 and sorted_key(1) < sorted_key(2) < sorted_key(256)
    assert record_key(1).startswith(b"user") and len(record_key(1)) == 20
    assert len({record_key(n) for n in range(10_000)}) == 10_000


@pytest.mark.parametrize("as_json", [True, False])
def test_a_value_has_fields_times_field_bytes_of_content(as_json: bool) -> None:
    value = ValueShape(10, 100, as_json).make(random.Random(6))
    assert 1000 <= len(value) <= 1200
