"""Validate, quarantine, split and write the data, as a Ray job.

    ray job submit --working-dir . -- python jobs/prepare.py --config jobs/configs/flights.yaml
"""

import sys

from mlscale.entry import job_main

if __name__ == "__main__":
    sys.exit(job_main("prepare"))
