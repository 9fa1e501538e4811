"""Judge the prediction log for drift against the serving model's training profile, as a Ray job (run it on a
schedule: a cron line, or a KubeRay RayCronJob).

    ray job submit --working-dir . -- python jobs/monitor.py --config jobs/configs/flights.yaml
"""

import sys

from mlscale.entry import job_main

if __name__ == "__main__":
    sys.exit(job_main("monitor"))
