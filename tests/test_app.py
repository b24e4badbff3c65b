"""The Streamlit app, driven headless by streamlit.testing."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from fbloop.designs import DesignConfig
from fbloop.loop import RunConfig, run_loop
from fbloop.store import Store

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def test_app_without_a_database(tmp_path, monkeypatch):
    monkeypatch.setenv("FBLOOP_DB", str(tmp_path / "none.db"))
    at = AppTest.from_file(APP, default_timeout=30).run()
    assert not at.exception
    assert "No database" in at.info[0].value


@pytest.fixture()
def db_with_run(tmp_path):
    path = tmp_path / "runs.db"
    with Store(path) as store:
        cfg = RunConfig(target="synthetic:p=8,rank=3", design=DesignConfig(name="sparse", mu=0.7),
                        budget=300, snapshot_every=50)
        run_loop(cfg, store, run_id="demo-run")
    return path


def test_app_shows_runs_curve_and_heatmaps(db_with_run, monkeypatch):
    monkeypatch.setenv("FBLOOP_DB", str(db_with_run))
    at = AppTest.from_file(APP, default_timeout=30).run()
    assert not at.exception
    assert at.selectbox(key="run").value == "demo-run"
    assert "PCC against answers" in [h.value for h in at.subheader]
    assert len(at.get("vega_lite_chart")) == 1
    assert len(at.get("image")) == 1
    assert not at.get("json")  # nothing echoed by Streamlit's magic
