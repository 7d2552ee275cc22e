"""``python -m pyserving``: the same as the ``pyserving`` command."""

import sys

from pyserving.cli import main

sys.exit(main())
