"""Prompt templates: files in ``prompts/`` with named ``{variables}``.

A template is its name (the file's stem), its text and the text's SHA-256;
every LLM answer records the name and hash of the template that produced it.
Rendering checks that every variable is given and no unknown one is: a typo in
a template or a caller fails loudly instead of shipping a prompt with a hole.

Templates use :meth:`str.format` syntax: ``{name}`` is a variable, ``{{`` and
``}}`` are literal braces (JSON examples in a prompt need them). Only plain
names are allowed — no positional ``{}``, no ``{a.b}``, ``{a[0]}``, ``!r`` or
``:spec`` — so a template can only place whole values. Values are inserted as
they are and never re-parsed, so braces inside a feature description are safe.

Choice: ``prompts/`` sits at the repository root (beside ``fbloop/``), which is
where an editable install finds it; :func:`load` takes another ``directory``.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"
SUFFIX = ".txt"


class TemplateError(ConfigError):
    """A prompt template is missing, malformed, or rendered with the wrong variables."""


def _variables(name: str, text: str) -> tuple[str, ...]:
    """The named fields of ``text`` in order of first appearance."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:  # a lone "{" or "}"
        raise TemplateError(f"Template {name!r}: {exc} (write literal braces as '{{{{' and '}}}}').") from exc
    out: list[str] = []
    for _, field_name, spec, conversion in parsed:
        if field_name is None:
            continue
        if not field_name.isidentifier() or spec or conversion:
            shown = "{" + field_name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise TemplateError(f"Template {name!r}: expect plain named variables like {{reference}}, "
                                f"got {shown}.")
        if field_name not in out:
            out.append(field_name)
    return tuple(out)


@dataclass(frozen=True)
class Template:
    """A named prompt template; ``hash`` is the SHA-256 of ``text`` (hex)."""

    name: str
    text: str
    hash: str = field(init=False)
    variables: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hash", hashlib.sha256(self.text.encode("utf-8")).hexdigest())
        object.__setattr__(self, "variables", _variables(self.name, self.text))

    def render(self, **values: object) -> str:
        """The template with every variable replaced; all must be given, none extra."""
        missing = [v for v in self.variables if v not in values]
        extra = sorted(set(values) - set(self.variables))
        if missing or extra:
            raise TemplateError(f"Template {self.name!r} takes variables {list(self.variables)}; "
                                f"missing {missing}, unknown {extra}.")
        return self.text.format(**values)


def available(directory: str | Path | None = None) -> list[str]:
    """Names of the templates in ``directory`` (default: the repository's ``prompts/``)."""
    folder = Path(directory) if directory is not None else PROMPTS_DIR
    return sorted(p.stem for p in folder.glob(f"*{SUFFIX}"))


def load(name: str, directory: str | Path | None = None) -> Template:
    """Template ``name`` from ``directory/name.txt``."""
    folder = Path(directory) if directory is not None else PROMPTS_DIR
    path = folder / f"{name}{SUFFIX}"
    if not path.is_file():
        raise TemplateError(f"No prompt template {name!r} at {path}; available: {available(folder)}.")
    return Template(name, path.read_text(encoding="utf-8"))


def combined_hash(*templates: Template) -> str:
    """One hash for a prompt built from several templates (system, body, item)."""
    return hashlib.sha256("\n".join(t.hash for t in templates).encode()).hexdigest()
