"""The ``fbloop`` command line: real subprocesses where it matters, CliRunner elsewhere."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import sql_rows
from fbloop import cli as cli_module
from fbloop.cli import main
from fbloop.queries.catalogue import make_design
from fbloop.queries.designs import DESIGNS, DesignConfig
from fbloop.targets.load import load_target

SMALL = ["--target", "synthetic:p=6,rank=2", "--design", "constructive"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def fbloop_cmd() -> list[str]:
    """The installed console script next to the interpreter, else ``python -m fbloop.cli``."""
    script = Path(sys.executable).with_name("fbloop")
    return [str(script)] if script.exists() else [sys.executable, "-m", "fbloop.cli"]


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def listed_runs(db: Path) -> list[dict]:
    res = cli("runs", "--db", db, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


# ---------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """One real ``python -m fbloop.cli run --json`` on p = 6; its db and parsed output."""
    tmp = tmp_path_factory.mktemp("small")
    db = tmp / "runs" / "small.db"  # the CLI creates the folder
    proc = subprocess.run([sys.executable, "-m", "fbloop.cli", "run", *SMALL, "--db", str(db), "--json"],
                          capture_output=True, text=True, timeout=300, cwd=tmp, env=ENV)
    assert proc.returncode == 0, proc.stderr
    return db, proc


def test_run_json_prints_exactly_one_object(small_run):
    _, proc = small_run
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    out = json.loads(lines[0])
    assert isinstance(out, dict)
    assert {"pcc", "answers", "bound", "run_id"} <= set(out)
    assert out["pcc"] >= 0.9999
    assert out["answers"] == out["bound"] == 21
    assert "error" not in proc.stderr


def test_run_with_a_held_out_share_reports_its_agreement(tmp_path):
    args = ["run", "--target", "synthetic:p=6,rank=2", "--design", "triplet", "--dist", "gaussian",
            "--budget", "300", "--holdout", "0.2", "--db", tmp_path / "h.db"]
    out = json.loads(cli(*args, "--json").stdout)
    assert 0.8 < out["holdout_agreement"] <= 1 and out["holdout_n"] > 30
    res = cli(*args[:-2], "--db", tmp_path / "h2.db")
    assert "Held-out agreement: Φ̂ predicts" in res.stdout
    bad = cli("run", "--design", "gaussian", "--target", "synthetic:p=6,rank=2", "--holdout", "0.2",
              "--db", tmp_path / "b.db")
    assert bad.exit_code == 2 and "held-out share scores triplet and tuple answers" in bad.stderr


def test_runs_lists_the_run(small_run):
    db, proc = small_run
    run_id = json.loads(proc.stdout)["run_id"]
    (row,) = listed_runs(db)
    assert row["id"] == run_id and row["status"] == "done" and row["answers"] == 21 and row["p"] == 6
    assert row["pcc"] >= 0.9999
    assert row["state"] == "done" and row["target"] == "synthetic(p=6,rank=2)" and row["agent"] == "oracle"
    text = cli("runs", "--db", db)
    assert text.exit_code == 0
    head, line = text.stdout.splitlines()
    assert head.split() == ["run", "status", "kind", "target", "agent", "p", "answers", "pcc"]
    assert line.split()[:7] == [run_id, "done", "pair", "synthetic(p=6,rank=2)", "oracle", "6", "21/21"]


@pytest.mark.parametrize("command", [["runs"], ["export", "RUN", "--out", "x.csv"]])
def test_reading_commands_refuse_a_missing_database(tmp_path, command):
    db = tmp_path / "tpyo.db"
    res = cli(*command, "--db", db)
    assert res.exit_code == 2 and f"No database at {db}" in res.stderr
    assert not db.exists()  # a typo creates nothing


def test_every_option_of_every_command_has_help():
    import click

    missing = [f"{name} {' / '.join(p.opts)}" for name, cmd in main.commands.items() for p in cmd.params
               if isinstance(p, click.Option) and not (p.help or "").strip()]
    assert missing == []
    for name, cmd in main.commands.items():
        assert (cmd.help or "").strip(), name
        text = cli(name, "--help").stdout
        assert "%%" not in text, name  # click prints help as written: no printf escapes


def test_the_oracle_noise_temperature_says_what_it_is():
    text = cli("run", "--help").stdout
    assert "--noise-temperature, --temperature" in text and "Not an LLM's sampling temperature" in " ".join(
        text.split())


def test_export_csv_and_jsonl(small_run, tmp_path):
    db, proc = small_run
    run_id = json.loads(proc.stdout)["run_id"]
    res = cli("export", run_id, "--db", db, "--out", tmp_path / "x.csv")
    assert res.exit_code == 0, res.output
    assert "wrote 21 answers" in res.stdout
    with open(tmp_path / "x.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["seq"]) for r in rows] == list(range(21))
    assert all(r["status"] == "ok" and r["kind"] == "pair" for r in rows)
    # the constructive design: e_i, then e_i + e_j (i < j)
    assert json.loads(rows[0]["a_indices"]) == [0] and json.loads(rows[6]["a_indices"]) == [0, 1]
    assert json.loads(rows[6]["a_values"]) == [1.0, 1.0]
    assert float(rows[0]["value"]) == pytest.approx(1.0)  # e_0 is the anchor

    res = cli("export", run_id, "--db", db, "--out", tmp_path / "x.jsonl")
    assert res.exit_code == 0, res.output
    recs = [json.loads(x) for x in (tmp_path / "x.jsonl").read_text().splitlines()]
    assert len(recs) == 21 and recs[20]["a_indices"] == [4, 5]
    assert [r["value"] for r in recs] == [float(r["value"]) for r in rows]

    bad = cli("export", run_id, "--db", db, "--out", tmp_path / "x.txt")
    assert bad.exit_code == 2 and len(stderr_lines(bad)) == 1
    assert stderr_lines(bad)[0].startswith("error:") and "'txt'" in bad.stderr
    unknown = cli("export", "no-such-run", "--db", db, "--out", tmp_path / "y.csv")
    assert unknown.exit_code == 2 and "no-such-run" in unknown.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # no .partial left
        "x.csv", "x.csv.meta.json", "x.jsonl", "x.jsonl.meta.json"]


@pytest.mark.slow  # 35–65 s on 2 loaded cores
def test_bound():
    res = cli("bound", "--design", "gaussian", "--p", "10", "--rank", "10")
    assert res.exit_code == 0
    assert "54 pairs" in res.stdout and "≥ 54" in res.stdout
    res = cli("bound", "--design", "gaussian", "--p", "10", "--rank", "10", "--json")
    assert json.loads(res.stdout) == {"design": "gaussian", "p": 10, "r": 10, "pairs": 54,
                                      "full_rank_lower_bound": 54}
    res = cli("bound", "--design", "eigen", "--target", "synthetic:p=8,rank=3", "--json")
    assert json.loads(res.stdout)["pairs"] == 3 * 4 // 2 + 5
    res = cli("bound", "--design", "gaussian", "--p", "4", "--rank", "9")
    assert res.exit_code == 2 and stderr_lines(res)[0].startswith("error:") and "r=9" in res.stderr
    res = cli("bound", "--design", "pivot", "--target", "pythia", "--json")  # the adaptive design's noise-free count
    assert json.loads(res.stdout)["pairs"] == make_design(DesignConfig(name="pivot"), load_target("pythia"), 0).count


def test_the_design_choices_are_the_designs():
    assert cli_module.DESIGN_CHOICES == list(DESIGNS)


def test_help_loads_no_numerics():
    """``fbloop --help`` answers at once: numpy, scipy and torch load only when a command needs them."""
    code = ("import sys, fbloop, fbloop.cli; fbloop.cli.main(['--help'], standalone_mode=False); "
            "print(sorted(m for m in ('numpy', 'scipy', 'torch') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout and proc.stdout.strip().endswith("[]")
    # and `python -m fbloop` is the same command
    proc = subprocess.run([sys.executable, "-m", "fbloop", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "serve-oracle" in proc.stdout


def test_the_package_loads_its_public_names_on_first_use():
    import fbloop

    assert sorted(fbloop.__all__) == sorted(set(fbloop.__all__)) and "load_target" in dir(fbloop)
    for name in fbloop.__all__:
        assert getattr(fbloop, name) is not None
    from fbloop import Store, load_target
    from fbloop.store import Store as home
    assert Store is home and callable(load_target)
    with pytest.raises(AttributeError, match="'nope'"):
        fbloop.nope


def test_target(tmp_path):
    res = cli("target", "synthetic:p=8,rank=3", "--json")
    assert res.exit_code == 0
    info = json.loads(res.stdout)
    assert info["p"] == 8 and info["rank"] == 3
    assert np.count_nonzero(np.array(info["top_eigenvalues"]) > 1e-9) == 3
    res = cli("target", "synthetic:p=8,rank=3", "--save", tmp_path / "d.safetensors")
    assert res.exit_code == 0 and "rank: 3" in res.stdout
    again = cli("target", f"dict:{tmp_path / 'd.safetensors'}", "--json")
    assert json.loads(again.stdout)["rank"] == 3


# ---------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("bad")
    files = {}

    def npy(name, arr):
        np.save(tmp / name, arr)
        files[name] = tmp / name

    npy("nan.npy", np.array([[1.0, np.nan], [np.nan, 1.0]]))
    npy("asym.npy", np.array([[1.0, 0.5], [0.0, 1.0]]))
    npy("nonpsd.npy", np.diag([1.0, -1.0, 1.0]))
    npy("cube.npy", np.ones((2, 2, 2)))
    npy("truncated.npy", np.eye(20))
    data = files["truncated.npy"].read_bytes()
    files["truncated.npy"].write_bytes(data[: len(data) // 2])

    from safetensors.numpy import save_file

    files["dict.safetensors"] = tmp / "dict.safetensors"
    save_file({"D": np.random.default_rng(0).standard_normal((6, 5))}, str(files["dict.safetensors"]))
    data = files["dict.safetensors"].read_bytes()
    files["dict.safetensors"].write_bytes(data[: len(data) - 40])
    files["missing.npy"] = tmp / "missing.npy"
    files["db"] = tmp / "bad.db"
    return files


BAD_RUNS = {
    "budget-zero": (SMALL + ["--budget", "0"], "budget=0"),
    "budget-negative": (SMALL + ["--budget", "-3"], "budget=-3"),
    "budget-above-design": (SMALL + ["--budget", "22"], "Budget 22"),
    "mu": (["--target", "synthetic:p=6,rank=2", "--design", "sparse", "--mu", "1.5"], "mu=1.5"),
    "chunk": (SMALL + ["--chunk", "0"], "chunk=0"),
    "spec-param": (["--target", "synthetic:p=6,rank=2,colour=red", "--design", "constructive"], "colour"),
    "spec-kind": (["--target", "banana:p=6", "--design", "constructive"], "banana"),
    "phi-missing": (["--target", "phi:{missing.npy}"], "missing.npy"),
    "phi-truncated": (["--target", "phi:{truncated.npy}"], "truncated.npy"),
    "phi-nan": (["--target", "phi:{nan.npy}"], "nan.npy"),
    "phi-asym": (["--target", "phi:{asym.npy}"], "asym.npy"),
    "phi-nonpsd": (["--target", "phi:{nonpsd.npy}"], "nonpsd.npy"),
    "phi-3d": (["--target", "phi:{cube.npy}"], "(2, 2, 2)"),
    "dict-truncated": (["--target", "dict:{dict.safetensors}"], "dict.safetensors"),
    "exact-triplet": (["--target", "synthetic:p=6,rank=2", "--design", "triplet", "--learner", "exact",
                       "--budget", "10"], "exact learner"),
}


@pytest.mark.parametrize("case", list(BAD_RUNS))
def test_bad_run_input_fails_cleanly(case, bad_files):
    args, needle = BAD_RUNS[case]
    for name, path in bad_files.items():
        args = [a.replace("{" + name + "}", str(path)) for a in args]
    if not any(a.startswith("--design") for a in args):
        args += ["--design", "constructive"]
    db = bad_files["db"]
    res = cli("run", *args, "--db", db)  # without --json: a progress bar must not show either
    assert res.exit_code == 2, res.output
    lines = stderr_lines(res)
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    assert needle in lines[0]
    assert res.stdout == ""
    assert not db.exists() or listed_runs(db) == []  # nothing half-written


def test_bad_choice_is_a_usage_error(bad_files):
    db = bad_files["db"]
    res = cli("run", "--target", "synthetic:p=6,rank=2", "--design", "nope", "--db", db)
    assert res.exit_code == 2
    errors = [line for line in stderr_lines(res) if line.startswith("Error:")]
    assert len(errors) == 1 and "'--design'" in errors[0] and "'nope'" in errors[0]
    assert res.stdout == ""
    assert not db.exists() or listed_runs(db) == []


# ---------------------------------------------------------------- kill and resume


RUN_ARGS = ["run", "--target", "synthetic:p=12,rank=3", "--design", "sparse", "--mu", "0.8",
            "--chunk", "8", "--seed", "1", "--run-id", "R", "--json"]


def _count(db: Path) -> int | None:
    """Answers in ``db``, read-only; ``None`` while it is missing, empty or locked."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2)
        try:
            return con.execute("SELECT COUNT(*) FROM answers WHERE run_id = 'R'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError:  # no file / no table yet / database is locked
        return None


def _kill_midway(db: Path, budget: int, cwd: Path) -> int | None:
    """Start a run into ``db`` and SIGKILL it once ≥ 10% of its answers are stored."""
    proc = subprocess.Popen(fbloop_cmd() + RUN_ARGS + ["--budget", str(budget), "--db", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=ENV)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            n = _count(db)
            if n is not None and budget // 10 <= n < budget:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                return n
            time.sleep(0.02)
        return None  # finished (or stalled) before we could kill it
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()


def _table(db: Path, sql: str) -> list[tuple]:
    return sql_rows(db, sql)


@pytest.mark.slow  # 35–65 s on 2 loaded cores
def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path):
    for budget in (3000, 12000, 48000):  # a bigger budget if a fast machine finished first
        a_db = tmp_path / f"A{budget}.db"
        seen = _kill_midway(a_db, budget, tmp_path)
        if seen is not None:
            break
    else:
        pytest.fail("every run finished before it could be killed")
    after_kill = _count(a_db)
    assert budget // 10 <= after_kill < budget
    assert _table(a_db, "SELECT status FROM runs WHERE id = 'R'") == [("running",)]
    # `fbloop runs` tells the killed run from a running one, and says how to resume it
    (row,) = listed_runs(a_db)
    assert row["status"] == "running" and row["state"] == "stopped"
    text = cli("runs", "--db", a_db).stdout
    assert text.splitlines()[1].split()[1] == "stopped" and "--run-id R" in text

    t_resume = time.time()
    args = RUN_ARGS + ["--budget", str(budget)]
    b_db = tmp_path / "B.db"
    procs = [subprocess.Popen(fbloop_cmd() + args + ["--db", str(db)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=ENV)
             for db in (a_db, b_db)]
    try:
        outs = [p.communicate(timeout=400) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        (line,) = out.splitlines()
        summary = json.loads(line)
        assert summary["run_id"] == "R" and summary["answers"] == budget and summary["pcc"] > 0.99

    answers_sql = "SELECT seq, agent, value, status FROM answers WHERE run_id = 'R' ORDER BY seq, agent"
    a_ans, b_ans = _table(a_db, answers_sql), _table(b_db, answers_sql)
    assert len(a_ans) == len(b_ans) == budget
    assert a_ans == b_ans  # same positions, agents, bit-identical values, statuses
    assert [r[0] for r in a_ans] == list(range(budget))
    for db in (a_db, b_db):
        assert _table(db, "SELECT run_id, seq, agent FROM answers GROUP BY run_id, seq, agent "
                          "HAVING COUNT(*) > 1") == []
        assert _table(db, "SELECT COUNT(*) FROM answers WHERE status = 'ok'") == [(budget,)]
        assert _table(db, "SELECT status FROM runs WHERE id = 'R'") == [("done",)]
    queries_sql = "SELECT seq, kind, a_idx, a_val, b_idx, b_val, c_idx, c_val FROM queries ORDER BY seq"
    a_q = _table(a_db, queries_sql)
    assert a_q == _table(b_db, queries_sql) and len(a_q) == budget
    # the answers stored before the kill were kept, not asked again
    assert _table(a_db, f"SELECT COUNT(*) FROM answers WHERE created_at < {t_resume}") == [(after_kill,)]

    # resuming under the same id with another config is refused, naming the key, and changes nothing
    plain = [a for a in args if a != "--json"]  # without --json: no progress bar may show either
    res = cli(*plain, "--mu", "0.85", "--db", a_db)
    assert res.exit_code == 2
    (line,) = stderr_lines(res)
    assert line.startswith("error: ") and "design.mu" in line and "0.8" in line and "0.85" in line
    res = cli(*plain, "--budget", str(budget + 8), "--db", a_db)  # the later --budget wins
    assert res.exit_code == 2 and "budget" in res.stderr and str(budget + 8) in res.stderr
    assert _count(a_db) == budget
    assert [r["id"] for r in listed_runs(a_db)] == ["R"]


def test_active_pool_run_reports_routing_cost_and_scoring(tmp_path):
    args = ["run", "--target", "synthetic:p=8,rank=2", "--design", "triplet", "--budget", "400", "--chunk", "64",
            "--agent", "pool", "--active", "uncertainty", "--member", "people:oracle,cost=1,reference",
            "--member", "cheap:oracle,noise=flip,flip=0.2,cost=0.01,seed=3", "--db", tmp_path / "p.db"]
    out = json.loads(cli(*args, "--json").stdout)
    agents = out["pool"]["agents"]
    assert set(agents) == {"people", "cheap"} and agents["people"]["accuracy_source"] == "reference"
    assert out["cost"] == pytest.approx(agents["people"]["spent"] + agents["cheap"]["spent"])
    assert out["active"]["strategy"] == "uncertainty" and out["active"]["chunks"] == 7
    res = cli(*args[:-2], "--db", tmp_path / "p2.db")
    assert "Pool cost" in res.stdout and "Active (uncertainty)" in res.stdout
    for bad, msg in ((["--member", "x"], "NAME:AGENT"), (["--member", "x:oracle,colour=red"], "colour=red"),
                     (["--member", "x:robot"], "robot"), (["--member", "x:oracle,cost=cheap"], "cost= a float")):
        res = cli("run", "--design", "triplet", "--agent", "pool", *bad, "--db", tmp_path / "b.db")
        assert res.exit_code == 2 and msg in res.stderr, res.stderr
    res = cli("run", "--design", "triplet", "--agent", "pool", "--db", tmp_path / "b.db")
    assert res.exit_code == 2 and "needs members" in res.stderr
    res = cli("run", "--design", "eigen", "--active", "ensemble", "--db", tmp_path / "b.db")
    assert res.exit_code == 2 and "Active strategies choose triplets" in res.stderr


def test_active_tuple_run_is_told_the_oracles_noise_and_tie_band(tmp_path):
    db = tmp_path / "t.db"
    args = ["run", "--target", "synthetic:p=6,rank=2", "--design", "closest", "--k", "3", "--noise", "logistic",
            "--noise-temperature", "0.2", "--tie-band", "0.05", "--active", "ensemble", "--budget", "64",
            "--chunk", "32", "--run-id", "T", "--db", db]
    out = json.loads(cli(*args, "--json").stdout)
    assert out["active"]["strategy"] == "ensemble" and out["active"]["chunks"] == 2 and out["answers"] == 64
    noise = json.loads(sql_rows(db, "SELECT config FROM runs WHERE id = 'T'")[0][0])["active"]["noise"]
    assert (noise["kind"], noise["temperature"], noise["tie_band"]) == ("logistic", 0.2, 0.05)


def test_export_parquet_factor_and_saelens(small_run, tmp_path):
    pd = pytest.importorskip("pandas")
    db, proc = small_run
    run_id = json.loads(proc.stdout)["run_id"]
    res = cli("export", run_id, "--db", db, "--out", tmp_path / "x.parquet", "--factor", tmp_path / "u.safetensors",
              "--as-saelens", tmp_path / "sae")
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(tmp_path / "x.parquet")
    assert len(df) == 21 and set(df["agent"]) == {"oracle"} and not df["held_out"].any()
    target = cli("target", f"saelens:{tmp_path / 'sae'}", "--json")
    assert target.exit_code == 0 and json.loads(target.stdout)["p"] == 6
    none = cli("export", run_id, "--db", db)
    assert none.exit_code == 2 and "--out, --factor or --as-saelens" in none.stderr


# ---------------------------------------------------------------- the app's server process


def test_app_stopped_with_sigterm_takes_its_server_down(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(fbloop_cmd() + ["app", "--db", str(tmp_path / "a.db"), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path, env=ENV)

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        deadline = time.monotonic() + 120
        while not listening():
            assert proc.poll() is None and time.monotonic() < deadline, "the app never started listening"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 10
        while listening() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not listening(), "the Streamlit server outlived `fbloop app`"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
