#!/usr/bin/env python
"""Kinetics / SSv2 multi-view classification accuracy of a fine-tuned classifier (softmax averaged over views).

  python eval/eval_classify.py --pretrain_cnn_path runs/kinetics_ft --eval_video_root /data/kinetics \\
      --output results/kinetics.json                          # VideoMAE ViT protocol: 16x4, 5 clips x 3 crops
  python eval/eval_classify.py --pretrain_cnn_path runs/x3d_ft --protocol x3d --eval_video_root /data/kinetics
  python eval/eval_classify.py --pretrain_cnn_path runs/ssv2_ft --dataset ssv2 --eval_video_root /data/ssv2

Flags: python eval/eval_classify.py --help. The work is done by mmpt_lite.evaluation.
"""

import sys

from mmpt_lite.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main("classify"))
