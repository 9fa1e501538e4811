"""The deploy stage: the registered bundle on Ray Serve, then the same held-out rows scored over HTTP and in batch,
which must agree to float rounding (the proof that serving applies exactly the training-time transforms)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import requests

from mlscale.config import PipelineConfig
from mlscale.data.prepare import PreparedData, load_prepared
from mlscale.data.records import json_value
from mlscale.direction import gain
from mlscale.errors import ServingError
from mlscale.evaluate import PREDICTION_COLUMN, score
from mlscale.features.label import label_scale
from mlscale.promotion import evaluate_model
from mlscale.registry.store import label_of, pinned_uri, set_version_tag
from mlscale.serve.deploy import deploy

log = logging.getLogger(__name__)
REQUEST_SIZES = 50  # rows per request: several requests of different sizes exercise batching


@dataclass
class ServingCheck:
    rows: int
    max_abs_diff: float
    max_rel_diff: float
    tolerance_rtol: float
    tolerance_atol: float
    served: list[float]
    batch: list[float]


def deploy_stage(config: PipelineConfig, model_uri: str | None = None) -> str:
    """Deploy a registered bundle with Ray Serve on the configured host, port and route.

    Args:
        config: the pipeline config (its `serve` section sizes the application).
        model_uri: models:/name@alias, models:/name/<version>, runs:/... or a bundle folder; None serves
            `models:/<tracking.registered_model>@<tracking.alias>`.

    Returns:
        The predict endpoint's URL.

    Raises:
        NothingToServe: the alias points at no version (e.g. no model has been promoted yet). An alias is resolved
            once, here: every replica serves that exact version.
        ServingError: serve.variant is int8 and it loses more of the test metric than serve.int8_max_metric_drop.
    """
    uri = model_uri or config.serving_uri
    if config.serve.variant != "fp32":
        check_variant(config, pinned_uri(uri, config.tracking_uri))
    return deploy(config, uri)


@dataclass(frozen=True)
class VariantVerdict:
    """A serving variant (int8) against fp32 on the same test rows: accepted when it loses at most `tolerance` of
    the metric (in the metric's own direction)."""

    variant: str
    metric: str
    fp32: float
    value: float
    drop: float
    tolerance: float

    @property
    def accepted(self) -> bool:
        return self.drop <= self.tolerance

    def record(self) -> dict[str, Any]:
        """What is tagged on the version (`mlscale.variant.<variant>`)."""
        return {"variant": self.variant, "metric": self.metric, "fp32": self.fp32, self.variant: self.value,
                "drop": self.drop, "tolerance": self.tolerance, "accepted": self.accepted}


def judge_variant(variant: str, metric: str, fp32: float, value: float, mode: str,
                  tolerance: float) -> VariantVerdict:
    """The pure decision: how much of the metric the variant loses (higher-is-better or lower-is-better alike)."""
    return VariantVerdict(variant, metric, fp32, value, gain(fp32, value, mode), tolerance)


def check_variant(config: PipelineConfig, served_uri: str) -> dict[str, Any]:
    """Measure the configured variant against fp32 on the test split, judge it, record the verdict on the version,
    and refuse the variant beyond the tolerance. Returns the record (metric, both values, the drop, the tolerance).

    Raises:
        ServingError: the variant loses more than serve.int8_max_metric_drop (recorded on the version first).
    """
    _, mode = config.metric
    metric = f"test_{config.metric_stem}"
    test = load_prepared(config).read("test")
    label = label_of(served_uri, config.tracking_uri)
    values = {variant: evaluate_model(config.evaluate, test, served_uri, config.tracking_uri, label=label,
                                      variant=variant).metrics[metric]
              for variant in ("fp32", config.serve.variant)}
    verdict = judge_variant(config.serve.variant, metric, values["fp32"], values[config.serve.variant], mode,
                            config.serve.int8_max_metric_drop)
    set_version_tag(served_uri, f"mlscale.variant.{verdict.variant}", json.dumps(verdict.record()),
                    config.tracking_uri)
    log.info("variant %s of %s: %s %.5f vs fp32 %.5f (drop %.5f, allowed %.5f)", verdict.variant, served_uri,
             metric, verdict.value, verdict.fp32, verdict.drop, verdict.tolerance)
    if not verdict.accepted:
        raise ServingError(f"{verdict.variant} variant of {served_uri} refused: {metric} {verdict.value:.5f} vs fp32 "
                           f"{verdict.fp32:.5f}, a drop of {verdict.drop:.5f} > serve.int8_max_metric_drop "
                           f"{verdict.tolerance:g}")
    return verdict.record()


def within_tolerance(served: np.ndarray, batch: np.ndarray, rtol: float, atol: float) -> np.ndarray:
    """|served - batch| <= atol + rtol * |batch|, elementwise (numpy.isclose's rule, stated here because the
    tolerances are part of the serving contract)."""
    return np.abs(served - batch) <= atol + rtol * np.abs(batch)


def served_vs_batch(config: PipelineConfig, prepared: PreparedData, model_uri: str, endpoint: str,
                    rows: int | None = None) -> ServingCheck:
    """Score held-out rows in batch (map_batches) and over HTTP; they must agree to float rounding.

    The tolerance is relative to each prediction (`serve.compare_rtol`) plus an absolute floor in units of the
    label's scale (`serve.compare_atol` x 1 for probabilities, x the label's std for regression), so the same
    settings hold for probabilities and for prices in the thousands.

    Args:
        config: the pipeline config (its serve section holds the tolerances and the row count).
        prepared: the prepared data; its test split supplies the rows.
        model_uri: the model both paths use.
        endpoint: the predict URL the deploy stage returned.
        rows: how many held-out rows; None: serve.compare_rows.

    Returns:
        Both sets of predictions and the largest absolute and relative differences.

    Raises:
        ServingError: the service answered with an error, or served and batch predictions differ.
    """
    rows = rows or config.serve.compare_rows
    scored = score(prepared.read("test").limit(rows), model_uri, config.tracking_uri,
                   variant=config.serve.variant).take_all()
    inputs = [name for name in scored[0] if name != PREDICTION_COLUMN] if scored else []
    records = [{name: json_value(row[name]) for name in inputs} for row in scored]
    served: list[float] = []
    for start_at in range(0, len(records), REQUEST_SIZES):
        response = requests.post(endpoint, json=records[start_at:start_at + REQUEST_SIZES], timeout=60)
        if response.status_code != 200:
            raise ServingError(f"{endpoint} answered {response.status_code}: {response.text[:2000]}")
        served += response.json()["predictions"]
    batch = [float(row[PREDICTION_COLUMN]) for row in scored]
    if len(batch) < rows:
        raise ServingError(f"only {len(batch)} held-out rows to compare, wanted {rows}")
    served_array, batch_array = np.asarray(served, dtype=np.float64), np.asarray(batch, dtype=np.float64)
    rtol = config.serve.compare_rtol
    atol = config.serve.compare_atol * label_scale(label_of(model_uri, config.tracking_uri))
    difference = np.abs(served_array - batch_array)
    relative = difference / np.maximum(np.abs(batch_array), np.finfo(np.float64).tiny)
    check = ServingCheck(rows=len(batch), max_abs_diff=float(difference.max(initial=0.0)),
                         max_rel_diff=float(relative.max(initial=0.0)), tolerance_rtol=rtol, tolerance_atol=atol,
                         served=served, batch=batch)
    outside = ~within_tolerance(served_array, batch_array, rtol, atol)
    if outside.any():
        worst = int(np.argmax(difference - (atol + rtol * np.abs(batch_array))))
        raise ServingError(f"served and batch predictions differ on {int(outside.sum())} of {len(batch)} rows "
                           f"(worst: served {served[worst]!r} vs batch {batch[worst]!r}; allowed |diff| <= "
                           f"{atol:.3g} + {rtol:g} x |batch|)")
    return check
