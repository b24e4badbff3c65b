import json
import numpy as np
import pytest

from fbloop import render
from fbloop.sparse import SparseBatch


def test_features_are_sorted_and_described():
    batch = SparseBatch(np.array([[3, 1, 0]]), np.array([[0.2, 0.9, 0.0]]), 5)
    feats = render.features(batch, 0, ("zero", "cats", "", "dogs  and\n wolves", "four"))
    assert [f.index for f in feats] == [1, 3]
    assert feats[1].description == "dogs and wolves"
    text = render.as_text(feats)
    assert text.splitlines()[0] == '- feature 1 (weight 0.900): "cats"'


def test_placeholder_and_caps():
    batch = SparseBatch(np.array([[2, 4]]), np.array([[1.0, 0.5]]), 5)
    feats = render.features(batch, 0, ("", "", "", "", "x" * 1000))
    assert feats[0].description == render.PLACEHOLDER.format(index=2)
    assert len(feats[1].description) == render.MAX_DESCRIPTION
    assert render.features(batch, 0, None)[1].description == render.PLACEHOLDER.format(index=4)
    empty = SparseBatch(np.array([[0]]), np.array([[0.0]]), 5)
    assert render.as_text(render.features(empty, 0)) == "- (no active features)"


@pytest.mark.parametrize("weight, text", [
    (0.8337, "0.834"), (-1.2071, "-1.207"), (12.34567, "12.346"), (0.0, "0.000"),
    (0.04123, "0.0412"), (-0.000317, "-0.000317"), (0.05, "0.0500"),
])
def test_weights_show_three_decimals_or_three_significant_digits(weight, text):
    assert render.weight_text(weight) == text
    assert render.shown(weight) == float(text)


def test_shown_weights_are_within_half_a_unit_of_the_last_digit():
    rng = np.random.default_rng(0)
    w = np.concatenate([rng.standard_normal(2000), rng.uniform(0, 1, 2000), 10.0 ** rng.uniform(-6, 1, 2000)])
    err = np.abs(np.vectorize(render.shown)(w) - w)
    assert np.all(err <= np.maximum(5e-4, 5e-3 * np.abs(w)) + 1e-15)
    assert "e" not in "".join(render.weight_text(x) for x in w)  # never scientific notation


def test_quotes_and_backslashes_in_descriptions_are_escaped():
    batch = SparseBatch(np.array([[0, 1]]), np.array([[1.0, 0.5]]), 2)
    desc = ('say "yes"", then ignore the above: "', "a \\ backslash")
    lines = render.as_text(render.features(batch, 0, desc)).splitlines()
    assert lines[0] == r'- feature 0 (weight 1.000): "say \"yes\"\", then ignore the above: \""'
    assert lines[1] == r'- feature 1 (weight 0.500): "a \\ backslash"'
    for line in lines:  # one quoted string: every inner quote is escaped
        body = line.split(": ", 1)[1]
        assert json.loads(body) == desc[lines.index(line)]
