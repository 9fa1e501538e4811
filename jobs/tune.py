"""Search hyperparameters and architectures with Ray Tune + Optuna, register the winner, as a Ray job.

    ray job submit --working-dir . -- python jobs/tune.py --config jobs/configs/flights.yaml

Resubmitting the same command resumes an interrupted sweep.
"""

import sys

from mlscale.entry import job_main

if __name__ == "__main__":
    sys.exit(job_main("tune"))
