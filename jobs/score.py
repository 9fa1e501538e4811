"""Batch-score the configured source with a registered model, as a Ray job.

    ray job submit --working-dir . -- python jobs/score.py --config jobs/configs/flights.yaml \
        --set data.source=parquet --set data.path=s3://bucket/new-flights/ \
        --set score.model=models:/flights-late-arrival@champion
"""

import sys

from mlscale.entry import job_main

if __name__ == "__main__":
    sys.exit(job_main("score"))
