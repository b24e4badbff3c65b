"""The app in a real browser: `streamlit run app.py` on 127.0.0.1, driven by headless Chromium.

Uses Debian's `chromium` through the `playwright` package (``executable_path``;
never ``playwright install``), with flags that keep the browser off the network.
Screenshots of the form and the dashboard (a people run, and an agent-pool run with active
querying) land in ``test-artifacts/``.
"""

import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from fbloop import human
from fbloop.cli import app_command
from fbloop.designs import DesignConfig
from fbloop.learner import LearnerConfig
from fbloop.loop import RunConfig, run_loop
from fbloop.store import Store

from conftest import sql_rows
from test_views import ACTIVE, POOL, add_run

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install -y chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    """Two agent-pool runs with active querying, a finished oracle run, and a run queued for people that bob
    has half answered and Φ̂ learned from (the latest, so the dashboard opens on it)."""
    path = tmp_path_factory.mktemp("browser") / "app.db"
    fast = LearnerConfig(final_steps=300, polish=False)
    design = DesignConfig(name="triplet", mu=0.7)
    people = RunConfig(target="synthetic:p=8,rank=3", design=design, agent="human", budget=24, check_rate=0.2,
                       learner_config=fast)
    with Store(path) as store:
        add_run(store, "pool", strategy="uncertainty", agent="pool", cost_per_answer=0.28,
                curve=((50, 0.55), (100, 0.85), (150, 0.95)), final={"pool": POOL, "active": ACTIVE},
                answers={"people": 40, "llm": 150})
        add_run(store, "pool-random", strategy="random", agent="pool", cost_per_answer=0.3,
                answers={"people": 40, "llm": 150})
        run_loop(RunConfig(target="synthetic:p=8,rank=3", design=design, budget=200, snapshot_every=50,
                           learner_config=fast), store, run_id="oracle-run")
        run_loop(people, store, run_id="people")
        for i in range(12):
            q = human.next_query(store, "people", "bob")
            human.submit(store, "people", q.seq, "bob", ("first", "second", "equal")[i % 3], 800, q.token)
        run_loop(people, store, run_id="people")
    return path


@pytest.fixture(scope="module")
def server(db, tmp_path_factory):
    """`streamlit run app.py` on 127.0.0.1, exactly as `fbloop app --db DB --port PORT` starts it."""
    port = free_port()
    log = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    argv, env = app_command(str(db), port)
    assert argv[argv.index("--server.address") + 1] == "127.0.0.1"
    with log.open("w") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"streamlit did not start:\n{log.read_text()}")
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


def answers_of(db: Path, agent: str) -> list[tuple]:
    return sql_rows(db, "SELECT seq, status, value FROM answers WHERE run_id = 'people' AND agent = ? ORDER BY id",
                    (agent,))


def wait_for_rows(db: Path, agent: str, n: int, timeout: float = 20.0) -> list[tuple]:
    deadline = time.monotonic() + timeout
    rows = answers_of(db, agent)
    while len(rows) < n and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = answers_of(db, agent)
    return rows


def settle(page, text: str) -> None:
    """Wait for ``text`` and for the script run behind it to finish drawing (buttons included)."""
    page.get_by_text(text).wait_for(timeout=30_000)
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(700)


def test_annotate_in_the_browser_then_see_the_dashboard(server, browser, db):
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(f"{server}/?page=annotate")
    name = page.get_by_label("Your name")
    name.fill("dora")
    name.press("Enter")
    page.get_by_text("First candidate").wait_for(timeout=60_000)
    settle(page, "0 of 30 triplets done")
    page.screenshot(path=str(ARTIFACTS / "form.png"), full_page=True)

    # One click answers one triplet.
    page.get_by_role("button", name="Closer to first").click()
    rows = wait_for_rows(db, "human:dora", 1)
    assert [(r[1], r[2]) for r in rows] == [("ok", 1.0)]
    settle(page, "1 of 30 triplets done")

    # The keyboard shortcut "2" answers "closer to second" (focus off the name field first).
    page.get_by_text("Which candidate is the reference closer to?").click()
    page.keyboard.press("2")
    rows = wait_for_rows(db, "human:dora", 2)
    assert [(r[1], r[2]) for r in rows][1:] == [("ok", -1.0)]
    settle(page, "2 of 30 triplets done")

    # A double click answers the question on screen once, never the next one too.
    page.get_by_role("button", name="Equally close").dblclick()
    settle(page, "3 of 30 triplets done")
    time.sleep(1.0)  # room for a stray second submission to land, were there one
    rows = answers_of(db, "human:dora")
    assert len(rows) == 3 and len({r[0] for r in rows}) == 3 and rows[2][1:] == ("ok", 0.0)
    settle(page, "3 of 30 triplets done")
    page.screenshot(path=str(ARTIFACTS / "form-answered.png"), full_page=True)

    dash = browser.new_page(viewport={"width": 1280, "height": 1700})
    dash.goto(f"{server}/?page=dashboard")
    dash.get_by_text("Answers per agent").wait_for(timeout=60_000)
    dash.get_by_text("human:dora").first.wait_for()
    dash.wait_for_timeout(1500)  # let the charts draw
    dash.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    page.close()
    dash.close()


def test_dashboard_of_a_pool_run(server, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 2600})  # the app scrolls inside: show it all
    page.goto(f"{server}/?page=dashboard")
    settle(page, "Answers per agent")
    page.get_by_label("Experiment").click()
    page.get_by_role("option", name="pool", exact=True).click()
    settle(page, "Routing split")
    page.get_by_text("PCC against cost").wait_for()
    page.wait_for_timeout(1500)  # let the charts draw
    page.screenshot(path=str(ARTIFACTS / "dashboard-pool.png"), full_page=True)
    page.close()
