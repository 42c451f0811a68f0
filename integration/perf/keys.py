"""Key choice and value shapes for the workloads: YCSB's generators, in plain Python.

Keys are named by record number through an FNV hash (YCSB's `user<hash>`), so inserts and
hot keys spread over the key space instead of piling onto its end.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

ZIPFIAN_THETA = 0.99
_FNV_OFFSET, _FNV_PRIME = 0xCBF29CE484222325, 0x100000001B3


def fnv64(n: int) -> int:
    """FNV-1a over the 8 bytes of n: YCSB's key scrambler."""
    h = _FNV_OFFSET
    for _ in range(8):
        h = ((h ^ (n & 0xFF)) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
        n >>= 8
    return h


def record_key(n: int) -> bytes:
    """The key of record n: 4 + 16 bytes, all in the partition that starts at `u`."""
    return b"user%016x" % fnv64(n)


def sorted_key(n: int) -> bytes:
    """The n-th of a sorted 16-byte key sequence (bulk loads, raw apsw inserts)."""
    return b"k" + n.to_bytes(15, "big")


def zeta(n: int, theta: float) -> float:
    return sum(1.0 / (i**theta) for i in range(1, n + 1))


class Zipfian:
    """Item numbers 0..n-1, item 0 the most popular (Gray et al., as in YCSB)."""

    def __init__(self, n: int, theta: float = ZIPFIAN_THETA, rng: random.Random | None = None) -> None:
        self.n, self.theta = n, theta
        self.rng = rng or random.Random()
        self._zeta2 = zeta(2, theta)
        self._alpha = 1.0 / (1.0 - theta)
        self._zetan = zeta(n, theta)
        self._eta = (1 - (2.0 / n) ** (1 - theta)) / (1 - self._zeta2 / self._zetan)

    def next(self) -> int:
        u = self.rng.random()
        uz = u * self._zetan
        if uz < 1.0:
            return 0
        if uz < 1.0 + 0.5**self.theta:
            return 1
        return min(self.n - 1, int(self.n * (self._eta * u - self._eta + 1) ** self._alpha))


class ScrambledZipfian:
    """Zipfian popularity, with the popular items scattered over 0..n-1 (YCSB's default)."""

    def __init__(self, n: int, rng: random.Random | None = None) -> None:
        self.n = n
        self._zipf = Zipfian(n, rng=rng)

    def next(self) -> int:
        return fnv64(self._zipf.next()) % self.n


class KeyChooser(Protocol):
    def next(self) -> int: ...


class Uniform:
    def __init__(self, n: int, rng: random.Random | None = None) -> None:
        self.n, self.rng = n, rng or random.Random()

    def next(self) -> int:
        return self.rng.randrange(self.n)


class Latest:
    """Skewed towards the most recently inserted records (YCSB workload D).

    `latest` is read from a callable, because inserts advance it while the run goes on.
    """

    def __init__(self, n: int, latest: Callable[[], int], rng: random.Random | None = None) -> None:
        self._zipf = Zipfian(n, rng=rng)
        self._latest = latest

    def next(self) -> int:
        top = self._latest()
        return max(0, top - self._zipf.next() % (top + 1))


def chooser(distribution: str, n: int, latest: Callable[[], int], rng: random.Random) -> KeyChooser:
    if distribution == "zipfian":
        return ScrambledZipfian(n, rng)
    if distribution == "uniform":
        return Uniform(n, rng)
    if distribution == "latest":
        return Latest(n, latest, rng)
    raise ValueError(f"distribution: {distribution!r} is not zipfian, uniform or latest")


@dataclass(frozen=True)
class ValueShape:
    """A record's value: `fields` fields of `field_bytes` each, as one JSON document or bytes."""

    fields: int = 10
    field_bytes: int = 100
    json: bool = True

    def make(self, rng: random.Random) -> bytes:
        if not self.json:
            return rng.randbytes(self.fields * self.field_bytes)
        letters = "abcdefghijklmnopqrstuvwxyz"
        doc = {f"field{i}": "".join(rng.choices(letters, k=self.field_bytes)) for i in range(self.fields)}
        return json.dumps(doc, separators=(",", ":")).encode()

    def field_value(self, rng: random.Random) -> str:
        """One field's new value as JSON text (a YCSB update writes one field)."""
        return json.dumps("".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=self.field_bytes)))

    @property
    def approx_bytes(self) -> int:
        return self.fields * (self.field_bytes + 12) if self.json else self.fields * self.field_bytes
