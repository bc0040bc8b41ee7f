"""``python -m weakseg``: the ``weakseg`` command (what ``torchrun -m weakseg`` runs in each process)."""

from weakseg.cli import main

main()
