"""Medians with min and max, and backends run interleaved (A B A B …) so the machine's drift hits all alike."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class Stats:
    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        if not values:
            raise ValueError("no values to summarise")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def scaled(self, factor: float) -> Stats:
        return Stats(self.median * factor, self.min * factor, self.max * factor, self.n)

    def to_json(self) -> dict:
        return {"median": self.median, "min": self.min, "max": self.max, "n": self.n}


def interleaved(runs: dict[str, Callable[[], dict[str, float]]], warmup: int, repeats: int) -> dict[str, dict[str, Stats]]:
    """Call each ``runs[name]()`` ``warmup`` times (discarded), then ``repeats`` rounds of every backend in turn.
    Each call returns named timings; the result is their Stats per backend."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            for key, value in run().items():
                samples[name].setdefault(key, []).append(value)
    return {name: {key: Stats.of(values) for key, values in s.items()} for name, s in samples.items()}
