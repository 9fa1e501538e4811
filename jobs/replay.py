"""The real-drift demonstration as a Ray job: the champion (trained on the first months) serves the following months
as live HTTP traffic, month by month; labels arrive a month late; the monitor retrains and releases by itself.

    ray job submit --working-dir . -- python jobs/pipeline.py --config jobs/configs/flights-replay.yaml
    ray job submit --working-dir . -- python jobs/replay.py --config jobs/configs/flights-replay.yaml
"""

import sys

from mlscale.entry import job_main

if __name__ == "__main__":
    sys.exit(job_main("replay"))
