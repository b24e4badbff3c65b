"""What a run shows while it works (fbloop/cli/progress.py): a bar per counted stage, spinners, the last line."""

from __future__ import annotations

import io
import re
import time

from click.testing import CliRunner

from fbloop.cli import main
from fbloop.cli.progress import RunProgress, Spinner
from fbloop.loop import Progress


def frames(text: str) -> list[str]:
    """Every redraw tqdm wrote (carriage returns and newlines both end one)."""
    return [f.strip() for f in re.split(r"[\r\n]", text) if f.strip()]


def test_each_stage_has_its_own_count_and_the_last_line_says_what_happened():
    out = io.StringIO()
    show = RunProgress("sparse on t", bound=None, file=out)
    for n in (100, 200, 300):
        show(Progress(n, 1000, 0.5, 0.1))
    time.sleep(0.6)  # past the bars' draw delay
    show(Progress(300, 1000, 0.9, 0.1))
    for done in (100, 200):
        show(Progress(300, 1000, 0.95, 1e-3, fit=(done, 5000)))
    time.sleep(0.6)
    show(Progress(300, 1000, 0.95, 1e-3, fit=(400, 5000)))
    show(Progress(300, 1000, 0.99, None, stage="L-BFGS polish"))
    time.sleep(0.8)  # the spinner draws
    show(Progress(300, 1000, 0.999, 1e-9, stage="done"))
    show.close("stopped at PCC >= 0.99 (--stop-at)")
    text = frames(out.getvalue())
    fit = [f for f in text if "final fit:" in f]
    assert fit and all("/5000" in f for f in fit)  # the fit's own total, never the answers'
    assert "converged" in fit[-1]  # stopped at 400 of 5000 steps
    assert any(re.search(r"L-BFGS polish [|/\\-] \[00:0\d\]", f) for f in text)  # a spinner, not a frozen bar
    assert not any("final fit:" in f and ("ans/s" in f or "s/ans" in f) for f in text)
    assert text[-1] == ("sparse on t: done, 300 answers of 1000, stopped at PCC >= 0.99 (--stop-at), "
                        "final fit 400 steps, PCC 0.999000, " + text[-1].rsplit(", ", 1)[1])
    assert text[-1].endswith("s")


def test_a_failed_run_says_how_far_it_got():
    out = io.StringIO()
    show = RunProgress("eigen on t", bound=13, file=out)
    show(Progress(5, 13, None, None))
    show.close(failed=True)
    assert frames(out.getvalue())[-1].startswith("eigen on t: stopped by an error after 5 answers")


def test_quiet_draws_nothing():
    out = io.StringIO()
    show = RunProgress("x", bound=None, quiet=True, file=out)
    show(Progress(5, 13, None, None))
    show(Progress(13, 13, 1.0, None, stage="done"))
    show.close()
    assert out.getvalue() == ""


def test_a_short_wait_draws_no_spinner_and_a_cleared_one_leaves_no_line():
    out = io.StringIO()
    Spinner("quick", file=out).close()
    assert out.getvalue() == ""
    out = io.StringIO()
    s = Spinner("slow", file=out, delay=0.05, leave=False)
    time.sleep(0.4)
    s.close()
    assert "slow" in out.getvalue()
    assert not out.getvalue().rstrip(" \r").endswith("s")  # cleared, not left as "slow: 0.4s"


def test_a_stop_at_run_ends_with_the_truth(tmp_path):
    res = CliRunner().invoke(main, ["run", "--target", "synthetic:p=12,rank=3", "--design", "sparse",
                                    "--learner", "gradient", "--budget", "20000", "--stop-at", "0.99",
                                    "--db", str(tmp_path / "s.db")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    last = frames(res.stderr)[-1]
    m = re.fullmatch(r"sparse on synthetic\(p=12,rank=3\): done, (\d+) answers of 20000, stopped at PCC >= 0.99 "
                     r"\(--stop-at\), final fit (\d+) steps, PCC ([01]\.\d+), [\d.]+s", last)
    assert m, last
    answers = int(m.group(1))
    assert answers < 20000 and float(m.group(3)) >= 0.99
    assert f"after {answers} answers" in res.stdout
    assert "20000step" not in res.stderr and not re.search(r"final fit.*\d+/20000", res.stderr)
