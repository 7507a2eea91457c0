#!/usr/bin/env python
"""HMDB-51 linear probe (LinearSVC on pooled window features, official 3 splits), MIL-NCE protocol.

  python eval/eval_hmdb.py --pretrain_cnn_path runs/how2_pretrain --output results/hmdb.json
  python eval/eval_hmdb.py --pretrain_cnn_path s3d_howto100m.pth --dict_path s3d_dict.npy \\
      --eval_video_root /data/hmdb51 --num_windows_test 10 --svm_c 0.1 1 10 100

Flags: python eval/eval_hmdb.py --help. The work is done by mmpt_lite.evaluation.
"""

import sys

from mmpt_lite.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main("hmdb"))
