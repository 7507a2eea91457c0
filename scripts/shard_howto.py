#!/usr/bin/env python
"""Shard a HowTo100M-format corpus (videos + caption CSVs) into memory-mapped frame shards (the same as `mmpt-lite shard`).

Flags: python scripts/shard_howto.py --help. The work is done by mmpt_lite.commands.shard.
"""

import sys

from mmpt_lite.commands.shard import main

if __name__ == "__main__":
    sys.exit(main())
