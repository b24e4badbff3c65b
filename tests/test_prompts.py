"""Prompt templates: files with named variables, a hash, and a check that every variable is given."""

import hashlib

import pytest

from fbloop import prompts
from fbloop.errors import ConfigError
from fbloop.prompts import Template, TemplateError

SHIPPED = {
    "system": (),
    "triplet": ("reference", "first", "second"),
    "triplet_batch": ("count", "comparisons"),
    "triplet_item": ("id", "reference", "first", "second"),
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_templates_load_with_name_hash_and_variables(name):
    t = prompts.load(name)
    assert t.name == name
    assert t.hash == hashlib.sha256((prompts.PROMPTS_DIR / f"{name}.txt").read_bytes()).hexdigest()
    assert t.variables == SHIPPED[name]
    assert name in prompts.available()


def test_render_fills_variables_and_keeps_literal_braces():
    out = prompts.load("triplet").render(reference="R", first="F", second="S")
    assert "Reference:\nR\n" in out and "First candidate:\nF\n" in out and "Second candidate:\nS\n" in out
    assert '{"answer": "first"}' in out and "{{" not in out


def test_values_are_inserted_verbatim_never_reparsed():
    t = Template("t", "a {x} b")
    assert t.render(x="{y} {{z}} {0}") == "a {y} {{z}} {0} b"


@pytest.mark.parametrize("values, missing, unknown", [
    ({"first": "F", "second": "S"}, ["reference"], []),
    ({"reference": "R", "first": "F", "second": "S", "third": "T"}, [], ["third"]),
    ({}, ["reference", "first", "second"], []),
])
def test_render_requires_exactly_the_template_variables(values, missing, unknown):
    with pytest.raises(TemplateError) as err:
        prompts.load("triplet").render(**values)
    assert f"missing {missing}" in str(err.value) and f"unknown {unknown}" in str(err.value)


@pytest.mark.parametrize("text", ["a { b", "a } b", "a {} b", "a {0} b", "a {x.y} b", "a {x[0]} b", "a {x!r} b",
                                  "a {x:>4} b"])
def test_malformed_templates_are_refused_at_load(tmp_path, text):
    (tmp_path / "bad.txt").write_text(text)
    with pytest.raises(TemplateError, match="bad"):
        prompts.load("bad", tmp_path)


def test_missing_template_names_the_path_and_the_choices(tmp_path):
    (tmp_path / "one.txt").write_text("hi {x}")
    with pytest.raises(TemplateError, match=r"nope.*\['one'\]"):
        prompts.load("nope", tmp_path)
    assert issubclass(TemplateError, ConfigError)


def test_hash_follows_the_text_and_combined_hash_the_order():
    a, b = Template("t", "one {x}"), Template("t", "one  {x}")
    assert a.hash != b.hash and a.variables == b.variables == ("x",)
    assert prompts.combined_hash(a, b) != prompts.combined_hash(b, a)
    assert prompts.combined_hash(a, b) == prompts.combined_hash(Template("u", "one {x}"), b)


def test_repeated_variable_is_listed_once():
    t = Template("t", "{x} and {y} and {x}")
    assert t.variables == ("x", "y")
    assert t.render(x=1, y=2) == "1 and 2 and 1"
