"""``python -m weakseg`` (used by torchrun: ``torchrun --nproc_per_node=N -m weakseg run RECIPE``)."""

import sys

from weakseg.cli import main

sys.exit(main())
