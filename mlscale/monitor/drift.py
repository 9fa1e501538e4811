"""Drift of live traffic against the training profile, per feature and overall.

Numeric features are compared through the training quantiles (the profile's sketch): PSI over the training deciles
and scipy's one-sample Kolmogorov-Smirnov test against the training CDF the quantiles describe. Categorical features
are compared through the training frequencies: PSI, scipy's Jensen-Shannon distance and chi-square test. The
statistics are scipy's; only the binning that turns a profile into expected frequencies is here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats
from scipy.spatial.distance import jensenshannon

EPSILON = 1e-4  # keeps PSI finite when a bin is empty on one side


@dataclass(frozen=True)
class FeatureDrift:
    column: str
    kind: Literal["numeric", "categorical"]
    psi: float
    test: str  # the scipy test behind statistic and p_value
    statistic: float
    p_value: float
    js_distance: float | None
    live_rows: int
    live_null_fraction: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two distributions over the same bins (fractions summing to 1)."""
    expected = np.clip(np.asarray(expected, dtype=np.float64), EPSILON, None)
    actual = np.clip(np.asarray(actual, dtype=np.float64), EPSILON, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def _chisquare(counts: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """scipy's chi-square of counts against expected fractions, each floored at EPSILON (a bin training never saw
    gets a sliver of mass, so what lands there counts in the test instead of dividing by zero)."""
    floor = np.clip(expected, EPSILON, None)
    test = stats.chisquare(counts, floor / floor.sum() * counts.sum())
    return float(test.statistic), float(test.pvalue)


def quantile_bins(quantiles: Sequence[float] | np.ndarray, bins: int = 10) -> dict[str, list[float]]:
    """Equal-mass bins read off the quantiles alone (a profile written before it carried `bins`): each distinct
    edge holds the ranks it repeats at, to the quantiles' resolution."""
    reference = np.asarray(quantiles, dtype=np.float64)
    ranks = np.linspace(0.0, 1.0, len(reference))
    levels = np.linspace(0.0, 1.0, bins + 1)
    at = np.interp(levels, ranks, reference)
    edges = np.unique(at[1:])
    upper = np.array([ranks[reference <= edge].max() for edge in edges])
    return {"edges": edges.tolist(), "mass": np.diff(np.concatenate([[0.0], upper])).tolist()}


def sample_profile(values: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """A reference made from a sample rather than a sketch (the predictions of a version's first window): its 101
    quantiles and its equal-mass bins with the sample's exact mass at each distinct edge."""
    present = np.sort(np.asarray(values, dtype=np.float64)[~np.isnan(values)])
    if not present.size:
        return {"quantiles": [0.0, 0.0], "bins": {"edges": [0.0], "mass": [1.0]}}
    quantiles = np.quantile(present, np.linspace(0.0, 1.0, 101), method="inverted_cdf")
    edges = np.unique(np.r_[np.quantile(present, np.linspace(0.0, 1.0, bins + 1)[1:-1], method="inverted_cdf"),
                            present[-1]])
    below = np.searchsorted(present, edges, side="right") / present.size
    return {"quantiles": quantiles.tolist(),
            "bins": {"edges": edges.tolist(), "mass": np.diff(np.r_[0.0, below]).tolist()}}


def numeric_drift(column: str, profile: dict[str, Any], live: np.ndarray) -> FeatureDrift:
    """Live values against a column's training profile: PSI over its equal-mass bins (deciles: finer bins than the
    sketch's rank error would measure the sketch, not the drift; values past the training max fall in the last bin)
    and a test of the same: scipy's KS against the CDF the quantiles describe where the column is continuous, the
    chi-square test over the bins where it has repeated values (KS assumes no ties: a wind speed measured in whole
    knots would always look drifted). Missing values are counted apart, not as drift."""
    values = np.asarray(live, dtype=np.float64)
    nulls = np.isnan(values)
    present = values[~nulls]
    reference = np.asarray(profile["quantiles"], dtype=np.float64)
    bins = profile.get("bins") or quantile_bins(reference)
    edges, mass = np.asarray(bins["edges"]), np.asarray(bins["mass"])
    index = np.minimum(np.searchsorted(edges, present, side="left"), len(edges) - 1)
    counts = np.bincount(index, minlength=len(mass)).astype(np.float64)
    observed = counts / max(present.size, 1)
    continuous = np.unique(reference).size == reference.size
    if not present.size:
        test, statistic, p_value = "none", 0.0, 1.0
    elif continuous:
        ranks = np.linspace(0.0, 1.0, len(reference))
        ks = stats.kstest(present, lambda x: np.interp(x, reference, ranks, left=0.0, right=1.0))
        test, statistic, p_value = "kstest", float(ks.statistic), float(ks.pvalue)
    else:
        test = "chisquare"
        statistic, p_value = _chisquare(counts, mass)
    return FeatureDrift(column, "numeric", psi(mass, observed), test, statistic, p_value, None, int(values.size),
                        float(nulls.mean()) if values.size else 0.0)


def categorical_drift(column: str, frequencies: dict[str, float], live: Sequence[Any]) -> FeatureDrift:
    """Live values against the training frequencies of the top categories (the rest of the mass is one `other`
    bin, where unseen values land too)."""
    present = [str(value) for value in live if value is not None]
    counts = Counter(present)
    names = list(frequencies)
    expected = np.array([frequencies[name] for name in names] + [max(0.0, 1.0 - sum(frequencies.values()))])
    observed = np.array([counts.get(name, 0) for name in names] + [sum(n for k, n in counts.items()
                                                                        if k not in frequencies)], dtype=np.float64)
    total = observed.sum()
    actual = observed / total if total else observed
    expected = expected / expected.sum()
    statistic, p_value = _chisquare(observed, expected) if total else (0.0, 1.0)
    distance = float(jensenshannon(expected, actual, base=2)) if total else 0.0
    return FeatureDrift(column, "categorical", psi(expected, actual), "chisquare", statistic, p_value, distance,
                        len(live), 1.0 - len(present) / len(live) if len(live) else 0.0)


def has_moved(drift: FeatureDrift, psi_threshold: float, p_value: float) -> bool:
    """A feature moved when the change is large (PSI) and not sampling noise (its test rejects at `p_value`): the
    PSI of a random sample from the training distribution itself grows with bins / rows (~0.25 for 400 rows of a
    column with a hundred categories)."""
    return drift.psi > psi_threshold and drift.p_value < p_value


def overall_drift(features: Sequence[FeatureDrift]) -> float:
    """One number for a window: the mean PSI over the features (0 is none; 0.1 moderate, 0.25 large by the usual
    reading)."""
    return float(np.mean([feature.psi for feature in features])) if features else 0.0


def profile_drift(profile: dict[str, Any], live: dict[str, Sequence[Any]]) -> list[FeatureDrift]:
    """Every profiled column present in the live columns, against the training profile of a bundle
    (`Bundle.profile`): numeric columns through their quantiles, categorical ones through their frequencies."""
    found = []
    for name, numeric in profile.get("numeric", {}).items():
        if name in live and numeric.get("quantiles"):
            values = np.array([np.nan if value is None else value for value in live[name]], dtype=np.float64)
            found.append(numeric_drift(name, numeric, values))
    for name, categorical in profile.get("categorical", {}).items():
        if name in live:
            found.append(categorical_drift(name, categorical["frequencies"], live[name]))
    return found
