"""Run logging on the main rank: JSONL metrics, TensorBoard scalars and a progress bar."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from mmpt_lite.progress import progress_bar

log = logging.getLogger("mmpt_lite")


def setup_logging(rank: int) -> None:
    """Main rank logs INFO to stderr; other ranks only warnings (so messages are not doubled)."""
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"%(asctime)s [rank{rank}] %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr, force=True)
    logging.getLogger("gensim").setLevel(logging.WARNING)  # its INFO lines would bury ours


class MetricLogger:
    """Writes ``metrics.jsonl`` and TensorBoard events under ``out_dir``; shows loss, lr, videos/s, ETA."""

    def __init__(self, out_dir: Path, *, total_steps: int, start_step: int, enabled: bool):
        self.enabled = enabled
        self.total_steps = total_steps
        self.bar = None
        self.tb = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(out_dir / "metrics.jsonl", "a", buffering=1)
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(out_dir / "tb"))
        except ImportError:  # tensorboard is a dependency; tolerate a trimmed install
            log.warning("tensorboard not installed: TensorBoard logging disabled")
        # Redirected to a file, a bar redrawn every second would bury the log lines: a line every 30 s there.
        self.bar = progress_bar(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True,
                                file_interval_s=30.0)

    def log(self, step: int, metrics: dict[str, float], *, kind: str = "train") -> None:
        if not self.enabled:
            return
        row = {"step": step, "kind": kind, "time": round(time.time(), 3), **metrics}
        self.jsonl.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def progress(self, step: int, *, loss: float, lr: float, videos_per_s: float) -> None:
        if self.bar is None:
            return
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", vid_s=f"{videos_per_s:.1f}", refresh=False)
        self.bar.update(step - self.bar.n)  # redraws at most every mininterval (and at the last step)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        self.jsonl.close()
