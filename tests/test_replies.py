"""Replies are read strictly: only the exact shape asked for counts, and every other answer says why."""

import jsonschema
import pytest

from fbloop.agents.replies import TOKENS, parse_batch, parse_single, response_format


@pytest.mark.parametrize("text, token", [
    ('{"answer": "first"}', "first"),
    ('  {"answer":"second"}\n', "second"),
    ('{"answer": "equal"}', "equal"),
    ('Sure! {"answer": "first"}', None),
    ('```json\n{"answer": "first"}\n```', None),
    ('{"answer": "First"}', None),
    ('{"answer": "B"}', None),
    ('{"answer": "first", "why": "because"}', None),
    ('{"answer": "first", "answer": "second"}', None),
    ('{"answer": 1}', None),
    ('["first"]', None),
    ("first", None),
    ('{"answer": "fir', None),
    ("", None),
])
def test_single_replies_are_parsed_strictly(text, token):
    got, why = parse_single(text)
    assert got == token
    assert (why is None) == (token is not None)


def test_batch_replies_are_parsed_per_id():
    ok = '{"answers": [{"id": 2, "answer": "second"}, {"id": 1, "answer": "first"}, {"id": 3, "answer": "equal"}]}'
    assert {k: v[0] for k, v in parse_batch(ok, [1, 2, 3]).items()} == {1: "first", 2: "second", 3: "equal"}
    partial = ('{"answers": [{"id": 1, "answer": "first"}, {"id": 2, "answer": "B"}, {"answer": "second"}, '
               '{"id": 4, "answer": "first"}, {"id": 4, "answer": "first"}, {"id": 5, "answer": "first", "x": 1}, '
               '{"id": true, "answer": "first"}, {"id": 99, "answer": "first"}]}')
    got = parse_batch(partial, [1, 2, 3, 4, 5, 6])
    assert got[1] == ("first", None)
    assert got[2][0] is None and "unknown answer" in got[2][1]
    assert got[3] == (None, "missing id")  # an entry without an id is charged to no one
    assert got[4] == (None, "id answered more than once")
    assert got[5][0] is None and got[6] == (None, "missing id")  # ids must be integers, not booleans
    for bad in ('Here: {"answers": []}', '{"answers": {}}', '{"answers": [], "note": 1}', "[]"):
        assert all(v[0] is None for v in parse_batch(bad, [1, 2]).values())


@pytest.mark.parametrize("batch", [False, True])
def test_the_schema_sent_accepts_a_reply_the_parser_takes_and_rejects_one_it_refuses(batch):
    schema = response_format(batch)["json_schema"]["schema"]
    good = {"answers": [{"id": 1, "answer": t} for t in TOKENS]} if batch else {"answer": "equal"}
    jsonschema.validate(good, schema)
    bad = {"answers": [{"id": 1, "answer": "B"}]} if batch else {"answer": "first", "why": "x"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
