#!/usr/bin/env python
"""Video-paragraph retrieval on YouCook2 validation (NORTON): each video's captions, in time order, as one
paragraph against its segments as clips; scored by caption average, DTW and OTAM (--otam_lambda, default 0.1).

  python eval/eval_youcook_paragraph.py --pretrain_cnn_path runs/how2_pretrain --output results/youcook_paragraph.json
  python eval/eval_youcook_paragraph.py --pretrain_cnn_path s3d_howto100m.pth --dict_path s3d_dict.npy \\
      --eval_video_root /data/youcook2 --eval_csv /data/youcook2/validation_youcook.csv

Flags: python eval/eval_youcook_paragraph.py --help. The work is done by mmpt_lite.evaluation.
"""

import sys

from mmpt_lite.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main("youcook_paragraph"))
