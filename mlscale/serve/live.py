"""Live numbers per served version during a release, kept by each replica and summed across replicas: requests,
failures, a latency histogram (for p99) and, for the challenger, how far its predictions are from the champion's on
the very same records. Plain counts, so replicas' stats merge by addition and travel as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mlscale.serve.metrics import LATENCY_BOUNDARIES_MS


@dataclass
class LiveStats:
    requests: int = 0
    errors: int = 0
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDARIES_MS) + 1))
    predictions: int = 0
    prediction_sum: float = 0.0
    paired: int = 0  # challenger predictions compared with the champion's on the same record
    paired_abs_diff: float = 0.0
    paired_diff: float = 0.0  # challenger minus champion, summed: the direction of the shift

    def request(self, seconds: float, failed: bool) -> None:
        self.requests += 1
        self.errors += int(failed)
        milliseconds = seconds * 1000.0
        bucket = next((i for i, bound in enumerate(LATENCY_BOUNDARIES_MS) if milliseconds <= bound),
                      len(LATENCY_BOUNDARIES_MS))
        self.latency_counts[bucket] += 1

    def predicted(self, values: list[float]) -> None:
        self.predictions += len(values)
        self.prediction_sum += float(sum(values))

    def compared(self, mine: list[float], champion: list[float]) -> None:
        self.paired += len(mine)
        self.paired_abs_diff += float(sum(abs(a - b) for a, b in zip(mine, champion, strict=True)))
        self.paired_diff += float(sum(a - b for a, b in zip(mine, champion, strict=True)))

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def latency_quantile_ms(self, quantile: float) -> float:
        """The upper bound of the histogram bucket holding the quantile (the last bucket: twice the top bound)."""
        total = sum(self.latency_counts)
        if not total:
            return 0.0
        rank, seen = quantile * total, 0
        for index, count in enumerate(self.latency_counts):
            seen += count
            if seen >= rank:
                return LATENCY_BOUNDARIES_MS[index] if index < len(LATENCY_BOUNDARIES_MS) else (
                    2 * LATENCY_BOUNDARIES_MS[-1])
        return 2 * LATENCY_BOUNDARIES_MS[-1]

    @property
    def mean_prediction(self) -> float | None:
        return self.prediction_sum / self.predictions if self.predictions else None

    @property
    def mean_abs_shift(self) -> float | None:
        return self.paired_abs_diff / self.paired if self.paired else None

    def merge(self, other: LiveStats) -> LiveStats:
        return LiveStats(
            requests=self.requests + other.requests, errors=self.errors + other.errors,
            latency_counts=[a + b for a, b in zip(self.latency_counts, other.latency_counts, strict=True)],
            predictions=self.predictions + other.predictions,
            prediction_sum=self.prediction_sum + other.prediction_sum, paired=self.paired + other.paired,
            paired_abs_diff=self.paired_abs_diff + other.paired_abs_diff,
            paired_diff=self.paired_diff + other.paired_diff)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LiveStats:
        return cls(**data)

    def summary(self) -> dict[str, float | int | None]:
        """The numbers a person reads in a release record."""
        return {"requests": self.requests, "errors": self.errors, "error_rate": round(self.error_rate, 6),
                "p50_ms": self.latency_quantile_ms(0.5), "p99_ms": self.latency_quantile_ms(0.99),
                "mean_prediction": self.mean_prediction, "mean_abs_shift_vs_champion": self.mean_abs_shift}
