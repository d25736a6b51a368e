"""nomyo-tray: a system tray icon showing whether the nomyo-agent identity is locked.

Install with the ``tray`` extra (``pipx install '.[tray]'`` from the checkout: pystray and
Pillow) and run ``nomyo-tray``. Importing this package is cheap: pystray (which needs a display
at import time) is loaded only when the icon is shown. See docs/tray.md.
"""

from nomyo_tray._cli import main

__all__ = ["main"]
