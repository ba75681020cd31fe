"""``python -m universality.train.distributed --config job.yaml`` (also under ``torchrun -m``)."""

from __future__ import annotations

import sys

from universality.train.distributed.job import main

if __name__ == "__main__":
    sys.exit(main())
