"""Progress bars in log files (mmpt_lite/progress.py): one line per redraw, each with the count and an ETA."""

import io

from mmpt_lite.progress import progress_bar


def test_a_bar_redirected_to_a_file_writes_whole_lines_with_eta():
    log = io.StringIO()  # not a terminal, as a redirected stderr
    for _ in progress_bar(range(4), desc="shards", unit="video", file=log, file_interval_s=0.0):
        pass
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) >= 4 and all(line.startswith("shards:") for line in lines)
    assert "4/4" in lines[-1] and "<" in lines[-1]  # elapsed<remaining, tqdm's ETA field


def test_the_file_interval_limits_the_lines():
    log = io.StringIO()
    for _ in progress_bar(range(1000), desc="train", file=log, file_interval_s=3600.0):
        pass
    assert len(log.getvalue().splitlines()) <= 3  # the first draw and the final one(s)
