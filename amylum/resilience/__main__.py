"""``python -m amylum.resilience CONFIG [--section.key=value ...]``: the elastic worker (see worker.py)."""

import time

_PROCESS_START = time.time()  # before torch's import: the restart cost a recovery pays includes it

import sys  # noqa: E402

from amylum.resilience.worker import main  # noqa: E402

sys.exit(main(process_start=_PROCESS_START))
