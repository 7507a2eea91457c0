"""Aligners: MIL-NCE candidate windows, span widening, crops, MAE sampling."""

import numpy as np
import pytest

from mmpt_lite.data.aligners import (
    apply_crop,
    mae_frame_indices,
    milnce_sample,
    multiscale_crop,
    nearest_candidates,
    random_crop,
    widen_span,
)


def brute_force_nearest(starts, ends, anchor, k):
    """Greedy growth written independently: at each step compare the two candidate windows' spans."""
    n = len(starts)
    lo, hi = anchor, anchor
    while hi - lo + 1 < min(k, n):
        can_left, can_right = lo > 0, hi < n - 1
        if can_left and can_right:
            if ends[hi] - starts[lo - 1] < ends[hi + 1] - starts[lo]:
                lo -= 1
            else:
                hi += 1
        elif can_right:
            hi += 1
        else:
            lo -= 1
    return lo


def test_nearest_candidates_matches_greedy_definition():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 12))
        starts = np.sort(rng.uniform(0, 100, n))
        ends = starts + rng.uniform(0.5, 8, n)
        anchor, k = int(rng.integers(n)), int(rng.integers(1, 6))
        lo = nearest_candidates(starts, ends, anchor, k)
        assert lo == brute_force_nearest(starts, ends, anchor, k)
        assert lo <= anchor < lo + max(1, min(k, n))


def test_nearest_candidates_prefers_tighter_side():
    starts = np.array([0.0, 10.0, 11.0, 30.0])
    ends = np.array([1.0, 10.5, 12.0, 31.0])
    assert nearest_candidates(starts, ends, 1, 2) == 1  # [10,12] beats [0,10.5]


def test_widen_span():
    assert widen_span(10.0, 11.0, 5.0) == (8.0, 13.0)
    assert widen_span(0.5, 1.0, 5.0) == (0.0, 5.0)
    assert widen_span(10.0, 20.0, 5.0) == (10.0, 20.0)
    assert widen_span(58.0, 59.0, 5.0, duration=60.0) == (55.0, 60.0)


def test_milnce_sample_is_inside_span_and_deterministic():
    starts = np.array([0.0, 4.0, 9.0, 15.0, 22.0, 30.0])
    ends = starts + 3.0
    for seed in range(50):
        c1 = milnce_sample(starts, ends, np.random.default_rng(seed), num_candidates=4, min_time=5.0,
                           clip_seconds=3.2, duration=40.0)
        c2 = milnce_sample(starts, ends, np.random.default_rng(seed), num_candidates=4, min_time=5.0,
                           clip_seconds=3.2, duration=40.0)
        assert c1.clip_start == c2.clip_start and (c1.caption_ids == c2.caption_ids).all()
        s0, s1 = c1.span
        assert s1 - s0 >= 5.0 - 1e-9 and s0 <= c1.clip_start <= max(s0, s1 - 3.2) + 1e-9
        assert len(c1.caption_ids) == 4 and (np.diff(c1.caption_ids) == 1).all()
    with pytest.raises(ValueError, match="no captions"):
        milnce_sample(np.zeros(0), np.zeros(0), np.random.default_rng(0), num_candidates=4, min_time=5,
                      clip_seconds=3.2)


@pytest.mark.parametrize("n,parts", [(10, 2), (7, 3), (2, 4)])
def test_milnce_sample_parts_draw_anchors_from_their_own_run_of_captions(n, parts):
    starts = np.arange(n) * 5.0
    ends = starts + 3.0  # min_time below the caption length: the span is the anchor caption itself
    for part in range(parts):
        anchors = set()
        for seed in range(60):
            c = milnce_sample(starts, ends, np.random.default_rng(seed), num_candidates=2, min_time=1.0,
                              clip_seconds=1.0, duration=n * 5.0, part=part, parts=parts)
            anchors.add(int(np.flatnonzero(starts == c.span[0])[0]))
        lo, hi = part * n // parts, max(part * n // parts + 1, (part + 1) * n // parts)
        assert anchors == set(range(lo, hi)), (part, anchors)
    with pytest.raises(ValueError, match="part 2"):
        milnce_sample(starts, ends, np.random.default_rng(0), num_candidates=2, min_time=1.0, clip_seconds=1.0,
                      part=2, parts=2)


def test_milnce_sample_fewer_captions_than_k_repeats_last():
    c = milnce_sample(np.array([1.0, 5.0]), np.array([2.0, 6.0]), np.random.default_rng(1), num_candidates=4,
                      min_time=5.0, clip_seconds=3.2, duration=10.0)
    assert list(c.caption_ids) == [0, 1, 1, 1]


def test_crops():
    rng = np.random.default_rng(0)
    frames = np.arange(2 * 10 * 12 * 3, dtype=np.uint8).reshape(2, 10, 12, 3)
    seen_flip = set()
    for _ in range(40):
        c = random_crop(10, 12, 8, rng)
        out = apply_crop(frames, c)
        assert out.shape == (2, 8, 8, 3)
        ref = frames[:, c.top:c.top + 8, c.left:c.left + 8]
        assert np.array_equal(out, ref[:, :, ::-1] if c.flip else ref)
        seen_flip.add(c.flip)
    assert seen_flip == {True, False}
    for _ in range(40):
        m = multiscale_crop(120, 160, rng)
        assert 0 <= m.top and m.top + m.height <= 120 and 0 <= m.left and m.left + m.width <= 160
        assert m.height in {120, 105, 90, 79} and m.width in {120, 105, 90, 79}


def test_mae_frame_indices():
    rng = np.random.default_rng(0)
    idx = mae_frame_indices(200, rng, num_frames=16, stride=4)
    assert len(idx) == 16 and (np.diff(idx) == 4).all() and idx[-1] < 200
    short = mae_frame_indices(20, rng, num_frames=16, stride=2)
    assert short[0] == 0 and short.max() == 19 and (np.diff(short) >= 0).all()
