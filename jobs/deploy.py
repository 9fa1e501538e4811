"""Deploy the registered bundle with Ray Serve and check served == batch predictions, as a Ray job.

    ray job submit --working-dir . -- python jobs/deploy.py --config jobs/configs/flights.yaml
"""

import sys

from mlscale.entry import job_main

if __name__ == "__main__":
    sys.exit(job_main("deploy"))
