"""``python -m nomyo_agent`` is ``nomyo-agent``."""

from nomyo_agent._cli import main

raise SystemExit(main())
