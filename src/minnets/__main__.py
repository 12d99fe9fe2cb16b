"""``python -m minnets`` (also what ``torchrun -m minnets`` runs on every rank)."""

import sys

from minnets.cli import main

sys.exit(main())
