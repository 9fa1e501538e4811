"""Release the challenger as a canary beside the champion; promote or roll back on live numbers, as a Ray job.

    ray job submit --working-dir . -- python jobs/canary.py --config jobs/configs/flights.yaml \
        --set serve.canary.fraction=0.05 --set serve.canary.min_requests=2000
"""

import sys

from mlscale.entry import job_main

if __name__ == "__main__":
    sys.exit(job_main("canary"))
