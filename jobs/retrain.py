"""Retrain on recent labelled windows, judge against the champion on the newest, and canary the new version when
it qualifies, as a Ray job. The monitor submits it by itself (`monitor.retrain.enabled`) with the windows it chose
in the split; by hand:

    ray job submit --working-dir . -- python jobs/retrain.py --config jobs/configs/flights.yaml \
        --set monitor.window=column --set monitor.window_column=month \
        --set split.train='[6,7,8]' --set split.val='[9]' --set split.test='[10]' --set tracking.promotion=canary
"""

import sys

from mlscale.entry import job_main

if __name__ == "__main__":
    sys.exit(job_main("retrain"))
