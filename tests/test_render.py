import numpy as np

from fbloop import render
from fbloop.sparse import SparseBatch


def test_features_are_sorted_and_described():
    batch = SparseBatch(np.array([[3, 1, 0]]), np.array([[0.2, 0.9, 0.0]]), 5)
    feats = render.features(batch, 0, ("zero", "cats", "", "dogs  and\n wolves", "four"))
    assert [f.index for f in feats] == [1, 3]
    assert feats[1].description == "dogs and wolves"
    text = render.as_text(feats)
    assert text.splitlines()[0] == '- feature 1 (weight 0.90): "cats"'


def test_placeholder_and_caps():
    batch = SparseBatch(np.array([[2, 4]]), np.array([[1.0, 0.5]]), 5)
    feats = render.features(batch, 0, ("", "", "", "", "x" * 1000))
    assert feats[0].description == render.PLACEHOLDER.format(index=2)
    assert len(feats[1].description) == render.MAX_DESCRIPTION
    assert render.features(batch, 0, None)[1].description == render.PLACEHOLDER.format(index=4)
    empty = SparseBatch(np.array([[0]]), np.array([[0.0]]), 5)
    assert render.as_text(render.features(empty, 0)) == "- (no active features)"
