"""``python -m rationality`` (and ``torchrun -m rationality train ...`` for multi-GPU training)."""

import sys

from rationality.cli import main

sys.exit(main())
