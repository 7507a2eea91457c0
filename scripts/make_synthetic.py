#!/usr/bin/env python
"""Generate the embedded how2-synth corpus (the same as `mmpt-lite synth`).

Flags: python scripts/make_synthetic.py --help. The work is done by mmpt_lite.commands.synth.
"""

import sys

from mmpt_lite.commands.synth import main

if __name__ == "__main__":
    sys.exit(main())
