"""``python -m mmpt_lite.commands`` = ``mmpt-lite``."""

import sys

from mmpt_lite.commands import main

sys.exit(main())
