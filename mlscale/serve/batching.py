"""Many requests, one forward pass: what a replica's @serve.batch (and a graph's model deployment) runs.

A record that passes validation but that the bundle cannot transform must fail only the request that sent it, not
every request batched with it: the batch is retried request by request when the merged pass fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlscale.registry.bundle import Bundle


@dataclass(frozen=True)
class TransformFailed:
    """A request whose records passed validation but could not be turned into features or predicted.

    The reason is for the replica's log, not the caller: it is internal exception text."""

    reason: str


def predict_requests(bundle: Bundle, requests: list[list[dict[str, Any]]]) -> list[list[float] | TransformFailed]:
    """One forward pass for every request in a batch; if it fails, each request alone, so a record the bundle
    cannot transform fails only the request that sent it."""
    try:
        predictions = bundle.predict_records([record for request in requests for record in request])
    except Exception:  # noqa: BLE001 - which request is at fault is found below
        return [_alone(bundle, request) for request in requests]
    out: list[list[float] | TransformFailed] = []
    start = 0
    for request in requests:
        out.append(predictions[start:start + len(request)].tolist())
        start += len(request)
    return out


def _alone(bundle: Bundle, request: list[dict[str, Any]]) -> list[float] | TransformFailed:
    try:
        return bundle.predict_records(request).tolist()
    except Exception as error:  # noqa: BLE001 - reported to this request's caller, not raised into the batch
        return TransformFailed(f"{type(error).__name__}: {error}"[:300])
