"""`python -m perturbmerge ...` (and `torchrun ... -m perturbmerge ...` for several processes)."""
import sys

from .cli import main

sys.exit(main())
