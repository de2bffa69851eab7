from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.regions.coords import box_iou, denormalise_box, format_boxes, normalise_box, order_boxes


@st.composite
def box_and_size(draw):
    w = draw(st.integers(1, 5000))
    h = draw(st.integers(1, 5000))
    x0 = draw(st.integers(0, w - 1))
    x1 = draw(st.integers(x0, w - 1))
    y0 = draw(st.integers(0, h - 1))
    y1 = draw(st.integers(y0, h - 1))
    return (x0, y0, x1, y1), w, h


@settings(max_examples=2000, deadline=None)
@given(box_and_size())
def test_round_trip_within_one_pixel(data):
    box, w, h = data
    n = normalise_box(box, w, h)
    assert all(0 <= v <= 999 for v in n) and n[0] < n[2] and n[1] < n[3]
    back = denormalise_box(n, w, h)
    # 0..999 quantises each edge to one unit = size/999 px: the round trip is within one pixel for
    # images up to 999 px, and within half a unit + half a pixel above that.  A box thinner than one
    # unit is widened to one unit to stay non-degenerate: then within 1.5 units + one pixel.
    for i, (a, b) in enumerate(zip(back, box)):
        size = w if i % 2 == 0 else h
        thin = (box[2] - box[0] + 1) * 999 / w < 1.5 or (box[3] - box[1] + 1) * 999 / h < 1.5
        bound = 1.5 * size / 999 + 1 if thin else max(1.0, 0.5 * size / 999 + 0.5)
        assert abs(a - b) <= bound + 1e-9, (box, w, h, n, back)


def test_known_values():
    # whole image -> [0, 0, 999, 999]
    assert normalise_box((0, 0, 1023, 1023), 1024, 1024) == (0, 0, 999, 999)
    # BiomedParse right lung [68,68,475,947] on 1024x1024
    assert normalise_box((68, 68, 475, 947), 1024, 1024) == (66, 66, 464, 925)
    # a one-pixel box stays non-degenerate
    n = normalise_box((5000, 0, 5000, 0), 5001, 5001)
    assert n[0] < n[2] and n[1] < n[3]


def test_format_and_order():
    boxes = order_boxes([(500, 10, 600, 50), (10, 10, 100, 50), (0, 0, 5, 5)])
    assert boxes == [(0, 0, 5, 5), (10, 10, 100, 50), (500, 10, 600, 50)]
    assert format_boxes(boxes) == "[[0, 0, 5, 5], [10, 10, 100, 50], [500, 10, 600, 50]]"
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == 50 / 150


def test_box_text_helpers():
    from pipeline.regions.coords import box_tag, ref_box

    assert box_tag([(1, 2, 3, 4)]) == "<box>[[1, 2, 3, 4]]</box>"
    assert ref_box("liver", [(1, 2, 3, 4), (5, 6, 7, 8)]) == "<ref>liver</ref><box>[[1, 2, 3, 4], [5, 6, 7, 8]]</box>"
    import numpy as np

    assert format_boxes(np.array([[10, 20, 30, 40]])) == "[[10, 20, 30, 40]]"  # numpy integers too


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 900), st.integers(0, 900), st.integers(1, 99), st.integers(1, 99)), min_size=1, max_size=5),
       st.lists(st.tuples(st.integers(0, 900), st.integers(0, 900), st.integers(1, 99), st.integers(1, 99)), min_size=1, max_size=5))
def test_iou_matrix_equals_pairwise_box_iou(a, b):
    from pipeline.regions.coords import iou_matrix

    boxes_a = [(x, y, x + w, y + h) for x, y, w, h in a]
    boxes_b = [(x, y, x + w, y + h) for x, y, w, h in b]
    m = iou_matrix(boxes_a, boxes_b)
    assert m.shape == (len(a), len(b))
    for i, p in enumerate(boxes_a):
        for j, q in enumerate(boxes_b):
            assert abs(m[i, j] - box_iou(p, q)) < 1e-12


def test_matching_helpers():
    import numpy as np

    from pipeline.regions.coords import count_matches_at, hungarian_iou, iou_matrix, match_max_iou

    g1, g2 = (0, 0, 100, 100), (40, 0, 140, 100)
    p1, p2 = (25, 0, 125, 100), (60, 0, 160, 100)
    m = iou_matrix([g1, g2], [p1, p2])
    # greedy pairs g2-p1 (IoU .74) and leaves g1-p2 (.25); the summed-IoU optimum pairs g1-p1, g2-p2
    assert [(r, c) for r, c, _ in match_max_iou(m)] == [(0, 0), (1, 1)]
    assert count_matches_at(m, 0.5) == 2
    half = iou_matrix([(0, 0, 10, 10)], [(0, 0, 10, 5)])  # IoU exactly 0.5
    assert half[0, 0] == 0.5
    assert count_matches_at(half, 0.5) == 1 and count_matches_at(half, 0.5, strict=True) == 0
    assert match_max_iou(np.zeros((0, 3))) == [] and count_matches_at(np.zeros((2, 0)), 0.5) == 0
    assert hungarian_iou([(0, 0, 10, 10), (50, 50, 60, 60)], [(0, 0, 10, 10)]) == (0.5, [1.0])


@given(st.tuples(*[st.integers(0, 999)] * 4))
def test_one_box_tag_is_box_tag_of_one_box(box):
    """The language stage's single-box tag writes exactly what the general box_tag writes (numpy ints too)."""
    import numpy as np

    from pipeline.regions.coords import box_tag, one_box_tag

    assert one_box_tag(box) == box_tag([box])
    assert one_box_tag(tuple(np.int64(v) for v in box)) == box_tag([box])
