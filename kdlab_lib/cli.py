"""``python -m kdlab_lib.cli``: the ``kdlab`` command (its code is ``tools/cli.py``)."""
import sys

from kdlab_lib.tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
