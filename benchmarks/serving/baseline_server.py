"""The baseline for benchmarks/serve_latency.py: the simplest peer a team would write, one FastAPI + uvicorn process
serving the same bundle with the same validation (mlscale's RequestParser), one forward pass per request.

    python -m benchmarks.serving.baseline_server --bundle <folder> --port 8100
"""

from __future__ import annotations

import argparse
import json

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from mlscale.registry.bundle import Bundle
from mlscale.serve.requests import RequestParser, RequestRejected


def make_app(bundle: Bundle) -> FastAPI:
    parser = RequestParser(list(bundle.input_schema), 10_000, 8 * 2**20,
                           passthrough=tuple(bundle.passthrough_columns))  # the same rules as the service
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        try:
            records = parser.parse(await request.body())
        except RequestRejected as rejected:
            return JSONResponse(status_code=rejected.status, content={"detail": rejected.detail})
        return Response(json.dumps({"predictions": bundle.predict_records(records).tolist()}),
                        media_type="application/json")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


if __name__ == "__main__":
    arguments = argparse.ArgumentParser()
    arguments.add_argument("--bundle", required=True)
    arguments.add_argument("--port", type=int, required=True)
    args = arguments.parse_args()
    uvicorn.run(make_app(Bundle.load(args.bundle)), host="127.0.0.1", port=args.port, log_level="warning",
                loop="uvloop", http="httptools", access_log=False)
