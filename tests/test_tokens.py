"""fbloop.agents.tokens: how the local server counts `usage` (the estimate, and a real model's tokenizer)."""

from __future__ import annotations

import importlib.util

import openai
import pytest

from fbloop import prompts
from fbloop.agents import llamacpp, tokens
from fbloop.agents.server import ServerConfig, serve
from fbloop.errors import ConfigError

from conftest import ORACLE_SPEC

MESSAGES = [{"role": "system", "content": "You compare activations."},
            {"role": "user", "content": "Reference:\n- feature 1 (weight 0.5)\nWhich is closer?"}]


def test_the_estimate_is_four_characters_a_token_over_the_messages():
    est = tokens.load("estimate")
    every = "\0".join(m["content"] for m in MESSAGES)
    assert est.prompt(MESSAGES) == len(every) // 4
    assert est.completion('{"answer": "first"}') == len('{"answer": "first"}') // 4
    assert est.completion("") == 1  # a reply costs at least a token
    parts = [{"role": "user", "content": [{"type": "text", "text": "abcd" * 10}]}]
    assert est.prompt(parts) == 10  # content parts are read like text


def test_an_unknown_tokenizer_or_a_missing_file_is_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match="'gpt-5'"):
        tokens.load("gpt-5")
    if importlib.util.find_spec("llama_cpp") is not None:
        with pytest.raises(ConfigError, match="No GGUF file"):
            tokens.load(str(tmp_path / "missing.gguf"))
    with pytest.raises(ConfigError, match="'gpt-5'"):
        ServerConfig(tokenizer="gpt-5")


needs_gguf = pytest.mark.skipif(llamacpp.missing() is not None, reason=str(llamacpp.missing()))


@needs_gguf
def test_smollm2_counts_the_chat_template_and_its_special_tokens():
    tok = tokens.load("smollm2")
    # ChatML: <|im_start|>system\n…<|im_end|>\n<|im_start|>user\n…<|im_end|>\n<|im_start|>assistant\n
    bare = sum(tok.completion(m["content"]) for m in MESSAGES)
    assert tok.prompt(MESSAGES) > bare + 6  # the template's tokens come on top of the texts'
    assert tok.completion('{"answer": "first"}') < len('{"answer": "first"}')  # subwords, not characters


@needs_gguf
def test_the_server_reports_the_tokenizers_counts_over_http(target):
    tok = tokens.load("smollm2")
    prompt = prompts.load("triplet").render(reference="- feature 1 (weight 0.5)", first="- feature 2 (weight 1)",
                                            second="- feature 3 (weight 1)")
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": prompt}]
    with serve(ServerConfig(target=ORACLE_SPEC, tokenizer="smollm2"), target=target) as srv:
        resp = openai.OpenAI(base_url=srv.url, api_key="k", max_retries=0).chat.completions.create(
            model="fbloop-oracle", messages=messages)
    assert resp.usage.prompt_tokens == tok.prompt(messages)
    assert resp.usage.completion_tokens == tok.completion(resp.choices[0].message.content)
    assert resp.usage.prompt_tokens != tokens.load("estimate").prompt(messages)
