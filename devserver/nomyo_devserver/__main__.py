"""``python -m nomyo_devserver``: the same as the ``nomyo-devserver`` command."""

from __future__ import annotations

import sys

from nomyo_devserver._cli import main

if __name__ == "__main__":
    sys.exit(main())
