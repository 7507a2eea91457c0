"""Launch an mmpt_lite run: python locallaunch.py projects/how2_pretrain.yaml --jobtype local_small"""

import sys

from mmpt_lite.launch import main

if __name__ == "__main__":
    sys.exit(main())
