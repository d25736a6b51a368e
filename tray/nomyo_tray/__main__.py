"""``python -m nomyo_tray``: the same as ``nomyo-tray``."""

from nomyo_tray._cli import main

raise SystemExit(main())
