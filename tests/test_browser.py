"""The app in a real browser: `streamlit run app.py` on 127.0.0.1, driven by headless Chromium.

Uses Debian's `chromium` through the `playwright` package (``executable_path``;
never ``playwright install``), with flags that keep the browser off the network.
Screenshots of the form (desktop, a 390 × 844 phone, and a closest-of-4, a rank-4 and an odd-one-out
question), and the dashboard (a people run, and an agent-pool run with active querying) land in
``test-artifacts/``. The server runs with access control on, as `fbloop app` does: people come in through
invitation links, the owner through the dashboard link.
"""

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from fbloop.agents import people as human
from fbloop.cli import app_command
from fbloop.learners import LearnerConfig
from fbloop.loop import RunConfig, run_loop
from fbloop.queries.designs import DesignConfig
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
    """Two agent-pool runs with active querying, a finished oracle run, runs of closest-of-4, rank-4 and
    odd-one-out questions queued for people, and a run queued for people that bob has half answered and Φ̂
    learned from (the latest, so the dashboard opens on it)."""
    path = tmp_path_factory.mktemp("browser") / "app.db"
    fast = LearnerConfig(final_steps=300, polish=False)
    design = DesignConfig(name="triplet", mu=0.7)
    people = RunConfig(target="synthetic:p=8,rank=3", design=design, agent="human", budget=80, check_rate=0.2,
                       learner_config=fast)
    with Store(path) as store:
        add_run(store, "pool", strategy="uncertainty", agent="pool", cost_per_answer=0.28,
                curve=((50, 0.55), (100, 0.85), (150, 0.95)), final={"pool": POOL, "active": ACTIVE},
                answers={"people": 40, "llm": 150})
        add_run(store, "pool-random", strategy="random", agent="pool", cost_per_answer=0.3,
                answers={"people": 40, "llm": 150})
        run_loop(RunConfig(target="synthetic:p=8,rank=3", design=design, budget=200, snapshot_every=50,
                           learner_config=fast), store, run_id="oracle-run")
        for run_id, tuples in (("closest4", DesignConfig(name="closest", k=4, mu=0.7)),
                               ("rank4", DesignConfig(name="rank", k=4, mu=0.7)),
                               ("odd3", DesignConfig(name="odd", mu=0.7))):
            run_loop(RunConfig(target="synthetic:p=8,rank=3", design=tuples, agent="human", budget=10,
                               check_rate=0.0, learner_config=fast), store, run_id=run_id)
        run_loop(people, store, run_id="people")
        for i in range(12):
            q = human.next_query(store, "people", "bob")
            human.submit(store, "people", q.seq, "bob", ("first", "second", "equal")[i % 3], 800, q.token)
        run_loop(people, store, run_id="people")
        TOKENS.update({"owner": human.owner_token(store), "dora": human.invite(store, "Dora", ["people"]),
                       "phone": human.invite(store, "phone", ["people"]),
                       "cleo": human.invite(store, "Cleo", ["closest4"]),
                       "rhea": human.invite(store, "Rhea", ["rank4"]), "otto": human.invite(store, "Otto", ["odd3"]),
                       **{f"crowd{i}": human.invite(store, f"crowd{i}", ["people"]) for i in range(CROWD)}})
    return path


TOKENS: dict[str, str] = {}  # invitation and owner secrets of the module's database
CROWD = 10  # concurrent browser annotators in the slow test


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


def wait_for_rows(db: Path, agent: str, n: int, timeout: float = 60.0) -> list[tuple]:
    deadline = time.monotonic() + timeout
    rows = answers_of(db, agent)
    while len(rows) < n and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = answers_of(db, agent)
    return rows


def settle(page, text: str) -> None:
    """Wait for ``text`` and for the script run behind it to finish drawing (buttons included)."""
    page.get_by_text(text).wait_for(timeout=60_000)
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(700)


def sign_in(browser, server, who: str, width: int = 1280, height: int = 1000):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(60_000)  # a loaded 2-core machine redraws the app slowly
    page.goto(f"{server}/?token={TOKENS[who]}")
    return page


def practise(page) -> None:
    """The three practice triplets, answered with the mouse."""
    settle(page, "Practice first")
    for i in range(3):
        page.get_by_role("button", name="Closer to first").click()
        settle(page, "Practice done" if i == 2 else f"Practice triplet {i + 2} of 3")


def test_annotate_in_the_browser_then_see_the_dashboard(server, browser, db):
    ARTIFACTS.mkdir(exist_ok=True)
    page = sign_in(browser, server, "dora")
    practise(page)
    page.screenshot(path=str(ARTIFACTS / "form.png"), full_page=True)

    # The first key after the practice counts.
    page.keyboard.press("2")
    rows = wait_for_rows(db, "human:dora", 1)
    assert [(r[1], r[2]) for r in rows] == [("ok", -1.0)]
    settle(page, "1 answered by you")

    # One click answers one triplet; its response time is the browser's, from display to press.
    page.get_by_text("1 answered by you").wait_for()
    time.sleep(1.0)
    page.get_by_role("button", name="Closer to first").click()
    rows = wait_for_rows(db, "human:dora", 2)
    assert [(r[1], r[2]) for r in rows][1:] == [("ok", 1.0)]
    meta = json.loads(sql_rows(db, "SELECT meta FROM answers WHERE agent = 'human:dora' ORDER BY id")[1][0])
    # At least the 1 s waited; the upper bound only catches a clock started at the wrong event (page load):
    # on a loaded machine the click itself lands up to a second or two after the wait (2,082 ms seen).
    assert meta["clock"] == "browser" and 1000 <= meta["response_ms"] < 5000, meta
    settle(page, "2 answered by you")

    # A double click answers the question on screen once, never the next one too.
    page.get_by_role("button", name="Equally close").dblclick()
    settle(page, "3 answered by you")
    time.sleep(1.0)  # room for a stray second submission to land, were there one
    rows = answers_of(db, "human:dora")
    assert len(rows) == 3 and len({r[0] for r in rows}) == 3 and rows[2][1:] == ("ok", 0.0)

    # Undo takes the last answer back; the same triplet is asked again.
    page.get_by_role("button", name="Undo last answer").click()
    settle(page, "taken back")
    assert len(answers_of(db, "human:dora")) == 2
    page.get_by_role("button", name="Closer to second").click()
    rows = wait_for_rows(db, "human:dora", 3)
    assert rows[2][0] == [r[0] for r in rows][2] and rows[2][1:] == ("ok", -1.0)
    settle(page, "3 answered by you")

    # A reload keeps her signed in (the link's token stays in the address).
    page.reload()
    settle(page, "3 answered by you")
    page.screenshot(path=str(ARTIFACTS / "form-answered.png"), full_page=True)

    dash = sign_in(browser, server, "owner", height=1700)
    dash.get_by_text("Answers per agent").wait_for(timeout=60_000)
    dash.get_by_text("Krippendorff").first.wait_for()
    dash.wait_for_timeout(1500)  # let the charts draw
    dash.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    page.close()
    dash.close()


def test_a_shortcut_key_in_a_text_field_is_typing_not_an_answer(server, browser, db):
    page = sign_in(browser, server, "dora")
    settle(page, "answered by you")
    before = len(answers_of(db, "human:dora"))
    box = page.get_by_label("Experiment")
    box.click()
    page.keyboard.press("1")  # typed into the experiment search, not an answer
    page.keyboard.press("Escape")
    time.sleep(1.5)
    assert len(answers_of(db, "human:dora")) == before
    page.get_by_text("Which candidate is the reference closer to?").click()  # focus off the field
    page.keyboard.press("1")
    assert len(wait_for_rows(db, "human:dora", before + 1)) == before + 1
    page.close()


@pytest.mark.parametrize("link", ["", "?token=forged", "?page=dashboard", "?token=&page=dashboard"])
def test_without_an_invitation_the_browser_sees_nothing(server, browser, link):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(f"{server}/{link}")
    settle(page, "needs a valid invitation link")
    assert page.get_by_role("button", name="Closer to first").count() == 0
    assert page.get_by_text("Answers per agent").count() == 0 and page.get_by_text("people (").count() == 0
    page.close()


def test_on_a_phone_the_buttons_are_in_view(server, browser, db):
    ARTIFACTS.mkdir(exist_ok=True)
    page = sign_in(browser, server, "phone", width=390, height=844)
    practise(page)
    page.screenshot(path=str(ARTIFACTS / "form-phone.png"))  # the first screen, as the phone shows it
    for name in ("Closer to first", "Equally close", "Skip", "Closer to second"):
        box = page.get_by_role("button", name=name).bounding_box()
        assert box is not None and 0 <= box["y"] and box["y"] + box["height"] <= 844, (name, box)
    page.get_by_role("button", name="Closer to second").click()
    assert wait_for_rows(db, "human:phone", 1)[0][1:] == ("ok", -1.0)
    page.close()


def test_a_closest_of_4_question_in_the_browser(server, browser, db):
    """No practice round for tuple questions: the first screen is a question, answered by its number's key
    (timed in the browser) or its button."""
    ARTIFACTS.mkdir(exist_ok=True)
    page = sign_in(browser, server, "cleo")
    settle(page, "Which candidate is closest to the reference?")
    page.get_by_role("button", name="Candidate 4").wait_for(timeout=60_000)  # the buttons, drawn after the heading
    page.locator("b", has_text="Candidate 4").wait_for(timeout=60_000)  # and the last table's title
    page.wait_for_timeout(700)
    page.screenshot(path=str(ARTIFACTS / "form-closest4.png"), full_page=True)
    page.keyboard.press("3")
    (first,) = tuple_rows(db, "closest4", "human:cleo", 1)
    assert first[:2] == ("ok", 3.0) and json.loads(first[2])["clock"] == "browser"
    settle(page, "Stored: candidate 3")
    page.get_by_role("button", name="No clear winner").click()
    assert tuple_rows(db, "closest4", "human:cleo", 2)[1][:2] == ("ok", 0.0)
    page.close()


def tuple_rows(db: Path, run_id: str, agent: str, n: int = 0) -> list[tuple]:
    """``(status, value, meta)`` of ``agent``'s stored answers in the run, read at once and then again until
    there are ``n`` (up to a minute)."""
    def read() -> list[tuple]:
        return sql_rows(db, "SELECT status, value, meta FROM answers WHERE run_id = ? AND agent = ? ORDER BY id",
                        (run_id, agent))

    deadline, got = time.monotonic() + 60, read()
    while len(got) < n and time.monotonic() < deadline:
        time.sleep(0.2)
        got = read()
    return got


def test_a_rank_4_question_in_the_browser(server, browser, db):
    """The ranking is built by picking candidates in the list, closest first; a partial one is refused on
    screen with nothing stored, the whole one is stored as its ranking code with the browser's clock."""
    from fbloop.records import ranking_code

    ARTIFACTS.mkdir(exist_ok=True)
    page = sign_in(browser, server, "rhea")
    settle(page, "Order the candidates by how close each is to the reference")
    page.locator("b", has_text="Candidate 4").wait_for(timeout=60_000)
    picker = page.get_by_role("combobox", name="Candidates, closest first")
    for j in (2, 4):
        picker.click()
        page.get_by_role("option", name=f"Candidate {j}", exact=True).click()
    page.keyboard.press("Escape")
    page.get_by_role("button", name="Submit ranking").click()
    settle(page, "Place all 4 candidates, closest first: 2 placed, candidates 1, 3 still to place")
    assert tuple_rows(db, "rank4", "human:rhea") == []  # refused: nothing stored
    for j in (1, 3):
        picker.click()
        page.get_by_role("option", name=f"Candidate {j}", exact=True).click()
    page.keyboard.press("Escape")
    page.wait_for_timeout(700)
    page.screenshot(path=str(ARTIFACTS / "form-rank4.png"), full_page=True)
    page.get_by_role("button", name="Submit ranking").click()
    (row,) = tuple_rows(db, "rank4", "human:rhea", 1)
    assert row[:2] == ("ok", float(ranking_code(np.array([[1, 3, 0, 2]]))[0]))
    assert json.loads(row[2])["clock"] == "browser"
    settle(page, "Stored: ranking 2 › 4 › 1 › 3")
    page.close()


def test_an_odd_one_out_question_in_the_browser(server, browser, db):
    ARTIFACTS.mkdir(exist_ok=True)
    page = sign_in(browser, server, "otto")
    settle(page, "Which item is the odd one out")
    page.get_by_role("button", name="Item 3").wait_for(timeout=60_000)
    page.locator("b", has_text="Item 3").wait_for(timeout=60_000)
    page.wait_for_timeout(700)
    page.screenshot(path=str(ARTIFACTS / "form-odd.png"), full_page=True)
    page.keyboard.press("2")
    (row,) = tuple_rows(db, "odd3", "human:otto", 1)
    assert row[:2] == ("ok", 2.0) and json.loads(row[2])["clock"] == "browser"
    settle(page, "Stored: item 2")
    page.close()


@pytest.mark.slow
def test_a_crowd_of_browsers_answers_at_once(server, browser, db):
    """``CROWD`` pages answer at once through the real app: every click is stored or visibly refused."""
    pages = [sign_in(browser, server, f"crowd{i}") for i in range(CROWD)]
    for page in pages:
        practise(page)
    clicks = 3
    for k in range(clicks):
        for page in pages:  # each page's press goes out before the others' replies are in
            if k == 0:  # the first answer by key, right after the practice: the first key counts
                page.keyboard.press("1")
            else:
                page.get_by_role("button", name="Closer to first").click(no_wait_after=True)
        for i, page in enumerate(pages):
            try:
                page.get_by_text(f"{k + 1} answered by you").or_(page.get_by_text("could not be stored")).or_(
                    page.get_by_text("not taken as an answer")).wait_for(timeout=180_000)
                assert page.get_by_text("not taken as an answer").count() == 0, "a real click refused as too quick"
            except Exception:
                page.screenshot(path=str(ARTIFACTS / f"crowd-{i}-round-{k}.png"), full_page=True)
                raise
    stored = {i: answers_of(db, f"human:crowd{i}") for i in range(CROWD)}
    refused = sum(page.get_by_text("could not be stored").count() for page in pages)
    assert sum(len(v) for v in stored.values()) + refused == CROWD * clicks
    seqs = [r[0] for v in stored.values() for r in v if r[0] >= 0]  # checks (at negative positions) are shared
    assert len(seqs) == len(set(seqs))  # overlap 1: no two people got the same triplet
    for page in pages:
        page.close()


def test_dashboard_of_a_pool_run(server, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    page = sign_in(browser, server, "owner", height=2600)  # the app scrolls inside: show it all
    settle(page, "Answers per agent")
    page.get_by_label("Experiment", exact=True).click()
    page.get_by_role("option", name="pool", exact=True).click()
    settle(page, "Routing split")
    page.get_by_text("PCC against cost").wait_for()
    page.wait_for_timeout(1500)  # let the charts draw
    page.screenshot(path=str(ARTIFACTS / "dashboard-pool.png"), full_page=True)
    page.close()
