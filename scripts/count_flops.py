#!/usr/bin/env python
"""Parameters and multiply-adds of a run config's model (the same as `mmpt-lite flops`).

Flags: python scripts/count_flops.py --help. The work is done by mmpt_lite.commands.flops.
"""

import sys

from mmpt_lite.commands.flops import main

if __name__ == "__main__":
    sys.exit(main())
