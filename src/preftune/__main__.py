"""``python -m preftune`` (and ``torchrun --nproc-per-node N -m preftune train ...``): the command line."""
import sys

from preftune.cli.main import main

sys.exit(main())
