#!/usr/bin/env python
"""Zero-shot text->video retrieval on MSR-VTT 1k-A (JSFusion test list), MIL-NCE protocol.

  python eval/eval_msrvtt.py --pretrain_cnn_path runs/how2_pretrain --output results/msrvtt.json
  python eval/eval_msrvtt.py --pretrain_cnn_path s3d_howto100m.pth --dict_path s3d_dict.npy \\
      --eval_video_root /data/msrvtt --num_windows_test 10 --num_thread_reader 8

Flags: python eval/eval_msrvtt.py --help. The work is done by mmpt_lite.evaluation.
"""

import sys

from mmpt_lite.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main("msrvtt"))
