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
    per_id = ('{"answers": [{"id": 1, "answer": "first"}, {"id": 2, "answer": "B"}, '
              '{"id": 3, "answer": "first", "x": 1}]}')
    got = parse_batch(per_id, [1, 2, 3])  # the ids are right: a bad entry is invalid alone
    assert got[1] == ("first", None)
    assert got[2][0] is None and "unknown answer" in got[2][1]
    assert got[3][0] is None and "expect keys" in got[3][1]


@pytest.mark.parametrize("entries", [
    '[{"id": 0, "answer": "first"}, {"id": 1, "answer": "second"}, {"id": 2, "answer": "equal"}]',  # from 0
    '[{"id": 1, "answer": "first"}, {"id": 2, "answer": "second"}]',  # one missing
    '[{"id": 1, "answer": "first"}, {"id": 2, "answer": "second"}, {"id": 2, "answer": "equal"}]',  # repeated
    '[{"id": 1, "answer": "first"}, {"id": 2, "answer": "second"}, {"id": 3, "answer": "equal"}, '
    '{"id": 4, "answer": "first"}]',  # one too many
    '[{"id": 1, "answer": "first"}, {"id": 2, "answer": "second"}, {"answer": "equal"}]',  # no id
    '[{"id": 1, "answer": "first"}, {"id": 2, "answer": "second"}, {"id": true, "answer": "equal"}]',  # a bool
    '[{"id": 1, "answer": "first"}, {"id": 2, "answer": "second"}, {"id": "3", "answer": "equal"}]',  # a string
    '[{"id": 1, "answer": "first"}, {"id": 2, "answer": "second"}, "equal"]',  # not an object
])
def test_a_batch_whose_ids_are_not_exactly_the_asked_ones_is_invalid_whole(entries):
    got = parse_batch('{"answers": %s}' % entries, [1, 2, 3])
    assert all(tok is None and "asked [1, 2, 3]" in why for tok, why in got.values()), got


def test_batch_reasons_are_short_even_for_huge_replies():
    huge = '{"answers": [{"id": 1, "answer": "%s"}]}' % ("x" * 1_000_000)
    (tok, why), = parse_batch(huge, [1]).values()
    assert tok is None and len(why) < 300
    assert parse_single("[" * 100_000 + "]" * 100_000)[0] is None  # nested past the recursion limit


def test_other_batch_shapes_are_invalid():
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


def test_a_batch_schema_can_fix_the_count_and_ids():
    from fbloop.agents.replies import schema
    from fbloop.agents.structured import request_fields

    fixed = schema(True, 3)["properties"]["answers"]
    assert fixed["minItems"] == fixed["maxItems"] == 3
    assert fixed["items"]["properties"]["id"]["enum"] == [1, 2, 3]
    assert "minItems" not in schema(True)["properties"]["answers"]
    # the engines' own fields carry the count; OpenAI's strict json_schema keeps the plain shape
    assert request_fields("json_object", True, 3)["response_format"]["schema"]["properties"]["answers"] == fixed
    assert request_fields("ollama", True, 3)["extra_body"]["format"]["properties"]["answers"] == fixed
    strict = request_fields("json_schema", True, 3)["response_format"]["json_schema"]["schema"]
    assert strict == schema(True)
    assert request_fields("json_object", False, 1)["response_format"]["schema"] == schema(False)
