"""Every ```bash block of README.md runs as written, so that an example that stops working fails the suite.

A block may be preceded by one HTML comment (invisible on the rendered page) that says how to test it:

    <!-- readme-test: slow; sub "--budget 200000" "--budget 2000" (a remark) -->

* ``sub "A" "B"`` replaces the text A by B in the block before it runs (smaller budgets, a free port);
* ``slow`` runs the block only with ``-m slow``;
* ``skip (why)`` never runs it: for commands that need what no test machine has (a GPU server); the
  reason is required and shows in the test report;
* anything in parentheses is a remark.

Each block runs as one ``bash -e`` script in a fresh folder (the repository's ``scripts/`` linked in, so
that ``./scripts/demo.sh`` works as written: the scripts resolve the link to the real checkout), with the
interpreter's ``bin/`` first on ``PATH``; background jobs are killed when it ends.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"(?:<!--\s*readme-test:(?P<directive>.*?)-->\s*\n)?```bash\n(?P<body>.*?)```", re.S)
LINKED = ["scripts"]  # the scripts find the real checkout through the link (its .venv, its pyproject)


def parse_directive(text: str | None) -> tuple[str | bool, list[tuple[str, str]]]:
    """``(mark, [(old, new), …])`` from a ``readme-test:`` comment's text: ``mark`` is ``"slow"``, the
    reason to skip (``skip (why)``) or False."""
    if not text:
        return False, []
    skip = re.search(r"(?:^|;)\s*skip\s*\(([^)]+)\)", text)
    subs = re.findall(r'sub\s+"([^"]*)"\s+"([^"]*)"', text)
    rest = re.sub(r'sub\s+"[^"]*"\s+"[^"]*"', "", text)
    rest = re.sub(r"\([^)]*\)", "", rest)  # remarks
    words = {w.strip() for w in rest.split(";") if w.strip()}
    unknown = words - {"slow", "skip"}
    if unknown:
        raise ValueError(f"Unknown readme-test directive(s) {sorted(unknown)} in {text!r}; expect slow, skip, sub.")
    if "skip" in words:
        if skip is None:
            raise ValueError(f"A skipped README block needs its reason: skip (why), in {text!r}.")
        return f"skip: {skip.group(1).strip()}", subs
    return "slow" if "slow" in words else False, subs


def readme_blocks(text: str) -> list[tuple[int, str | bool, str]]:
    """``(line, mark, script)`` for each bash block, substitutions applied."""
    out = []
    for m in BLOCK.finditer(text):
        mark, subs = parse_directive(m.group("directive"))
        body = m.group("body")
        for old, new in subs:
            if old not in body:
                raise ValueError(f"README block at line {text[:m.start('body')].count(chr(10)) + 1}: "
                                 f"substitution {old!r} matches nothing.")
            body = body.replace(old, new)
        out.append((text[: m.start("body")].count("\n") + 1, mark, body))
    return out


BLOCKS = readme_blocks(README.read_text())


def test_the_readme_has_its_blocks_and_each_substitution_applies():
    assert len(BLOCKS) >= 5
    assert any("./scripts/demo.sh" in body for _, _, body in BLOCKS)
    assert parse_directive(' slow; sub "a b" "c" (why; because) ') == ("slow", [("a b", "c")])
    assert parse_directive(" skip (no GPU here) ") == ("skip: no GPU here", [])
    with pytest.raises(ValueError, match="banana"):
        parse_directive("banana")
    with pytest.raises(ValueError, match="reason"):
        parse_directive("skip")
    with pytest.raises(ValueError, match="matches nothing"):
        readme_blocks('<!-- readme-test: sub "x" "y" -->\n```bash\nfbloop runs\n```\n')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "line, body",
    [pytest.param(line, body, id=f"README-line-{line}",
                  marks=[pytest.mark.slow] if mark == "slow" else
                  [pytest.mark.skip(reason=mark)] if mark else [])
     for line, mark, body in BLOCKS],
)
def test_readme_block_runs(line, body, tmp_path):
    if "./scripts/" in body and not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("the setup scripts' .venv is not there (the suite runs from another interpreter)")
    for name in LINKED:
        if (ROOT / name).exists():
            (tmp_path / name).symlink_to(ROOT / name)
    script = "set -e\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + body
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "README_PORT": str(_free_port()), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([shutil.which("bash") or "bash", "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (
        f"README block at line {line} failed with exit status {proc.returncode}:\n{body}\n"
        f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


RESULT_REF = re.compile(r"`(?:benchmarks/)?results/([\w./{},-]+)`")


def expand_braces(text: str) -> list[str]:
    """``a{,_b}.{json,png}`` → ``a.json, a.png, a_b.json, a_b.png`` (as the shell expands them)."""
    m = re.search(r"\{([^{}]*)\}", text)
    if m is None:
        return [text]
    return [x for alt in m.group(1).split(",") for x in expand_braces(text[:m.start()] + alt + text[m.end():])]


def test_expand_braces():
    assert expand_braces("s{,_b}.{json,png}") == ["s.json", "s.png", "s_b.json", "s_b.png"]
    assert expand_braces("plain.json") == ["plain.json"]


@pytest.mark.parametrize("doc", ["README.md", "benchmarks/README.md"])
def test_every_results_file_the_docs_name_exists(doc):
    """A figure quoted from ``benchmarks/results/NAME`` can be checked there: the file is in the tree."""
    text = (ROOT / doc).read_text()
    names = [n for m in RESULT_REF.finditer(text) for n in expand_braces(m.group(1))]
    assert names, f"{doc} names no results file; the pattern no longer matches how it cites them"
    missing = sorted({n for n in names if not (ROOT / "benchmarks" / "results" / n).exists()})
    assert not missing, f"{doc} cites results files that are not in benchmarks/results/: {missing}"
