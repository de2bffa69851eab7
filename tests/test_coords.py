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
