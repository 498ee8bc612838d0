"""``python -m archbench`` (and ``torchrun -m archbench``): the ``archbench`` command."""

import sys

from archbench.cli import main

if __name__ == "__main__":
    sys.exit(main())
