"""The annotation form's tables and words (fbloop.app.form): feature tables and the features blocks share,
the buttons, receipts and refusals of each kind of question."""

import pytest

from fbloop.app import form


def test_feature_tables_escape_and_mark_shared_features():
    from fbloop.render import PLACEHOLDER, Feature

    ref = [Feature(1, 0.9, "<script>alert(1)</script>"), Feature(2, 0.1, PLACEHOLDER.format(index=2))]
    first = [Feature(1, 0.5, "x")]
    shared = form.shared_features(ref, first, [Feature(5, 0.4, "y")])
    assert shared == {"reference": {1}, "first": {1}, "second": set()}
    html = form.feature_table(ref, shared["reference"], "Reference")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "◆ #1" in html and "no description" in html and "no description available" not in html


def test_shared_features_come_first_in_the_references_order():
    from fbloop.render import Feature

    ref = [Feature(1, 0.9, "a"), Feature(2, 0.5, "b"), Feature(3, 0.1, "c")]
    first = [Feature(7, 0.9, "x"), Feature(3, 0.5, "c"), Feature(1, 0.2, "a")]
    second = [Feature(2, 0.8, "b"), Feature(9, 0.1, "y")]
    r, f, s = form.aligned(ref, first, second)
    assert [x.index for x in r] == [1, 2, 3] and [x.index for x in f] == [1, 3, 7] and [x.index for x in s] == [2, 9]


def test_tuple_blocks_mark_and_align_what_they_share():
    from fbloop.render import Feature

    ref = [Feature(1, 0.9, "a"), Feature(2, 0.5, "b")]
    cands = [[Feature(7, 0.9, "x"), Feature(2, 0.4, "b")], [Feature(8, 0.3, "y")], [Feature(1, 0.2, "a")]]
    assert form.shared_blocks(ref, cands) == ({1, 2}, [{2}, set(), {1}])
    r, *c = form.aligned(ref, *cands)
    assert [x.index for x in r] == [1, 2] and [[x.index for x in b] for b in c] == [[2, 7], [8], [1]]
    items = [[Feature(4, 0.9, "p"), Feature(5, 0.1, "q")], [Feature(6, 0.8, "r"), Feature(5, 0.7, "q")],
             [Feature(9, 0.2, "s")]]
    assert form.shared_blocks(None, items) == (set(), [{5}, {5}, set()])
    none, *i = form.aligned(None, *items)
    assert none is None and [[x.index for x in b] for b in i] == [[5, 4], [5, 6], [9]]


@pytest.mark.parametrize("kind, k, buttons", [
    ("triplet", 2, [("first", "1"), ("equal", "E"), ("skip", "S"), ("second", "2")]),
    ("closest", 4, [(1, "1"), (2, "2"), (3, "3"), (4, "4"), (0, "N"), ("skip", "S")]),
    ("odd", 3, [(1, "1"), (2, "2"), (3, "3"), ("skip", "S")]),
    ("rank", 8, [("skip", "S")]),
])
def test_answer_buttons_and_their_keys(kind, k, buttons):
    assert [(answer, key) for answer, _, key in form.answer_buttons(kind, k)] == buttons


def test_closest_of_twelve_has_keys_up_to_nine():
    keys = [key for _, _, key in form.answer_buttons("closest", 12)]
    assert keys[:9] == [str(j) for j in range(1, 10)] and keys[9:12] == [None] * 3


@pytest.mark.parametrize("kind, answer, label", [
    ("triplet", "first", "closer to first"), ("triplet", "equal", "equally close"), ("closest", 3, "candidate 3"),
    ("closest", 0, "no clear winner"), ("closest", "none", "no clear winner"), ("odd", 2, "item 2"),
    ("rank", [2, 1, 4, 3], "ranking 2 › 1 › 4 › 3"), ("rank", "skip", "skip"),
])
def test_answer_labels(kind, answer, label):
    assert form.answer_label(kind, answer) == label


@pytest.mark.parametrize("order, says", [
    ([2, 1], "2 placed, candidates 3, 4 still to place"), ([], "0 placed, candidates 1, 2, 3, 4"),
    ([1, 2, 3], "candidate 4 still"), ([1, 1, 2, 3], "Candidate 1 is placed more than once"),
    ([1, 2, 3, 5], "no candidate 5"), ([2, 4, 1, 3], None),
])
def test_a_ranking_in_the_form_must_place_every_candidate_once(order, says):
    problem = form.ranking_problem(order, 4)
    assert problem is None if says is None else (says in problem and "Nothing was stored" in problem)
