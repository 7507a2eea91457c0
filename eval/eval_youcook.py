#!/usr/bin/env python
"""Zero-shot text->video retrieval on YouCook2 validation clips (one per CSV segment), MIL-NCE protocol.

  python eval/eval_youcook.py --pretrain_cnn_path runs/how2_pretrain --output results/youcook.json
  python eval/eval_youcook.py --pretrain_cnn_path s3d_howto100m.pth --dict_path s3d_dict.npy \\
      --eval_video_root /data/youcook2 --eval_csv /data/youcook2/validation_youcook.csv

Flags: python eval/eval_youcook.py --help. The work is done by mmpt_lite.evaluation.
"""

import sys

from mmpt_lite.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main("youcook"))
