import sys

from nomyo_proxy._cli import main

sys.exit(main())
