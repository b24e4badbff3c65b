"""The crowd benchmark's concurrency part, small: processes answering through ``human.submit`` while a
queue is written into the same file lose nothing, double nothing and show no error."""

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_crowd")


def test_concurrent_annotators_beside_a_queue_writer(bench, tmp_path):
    got = bench.concurrency(tmp_path, procs=4, per_proc=25, queue=30_000, settle_s=0.5)
    assert got["stored_reported"] == got["rows_in_store"] == got["distinct_rows"] == 100
    assert got["lost"] == 0 and got["doubled"] == 0 and got["errors_shown"] == 0
    assert got["max_people_per_triplet"] == 1 and got["writer_queue_rows"] == 33_333


@pytest.mark.slow
def test_fifty_annotators_two_hundred_answers_each(bench, tmp_path):
    got = bench.concurrency(tmp_path, procs=50, per_proc=200, queue=200_000)
    assert got["rows_in_store"] == got["distinct_rows"] == 10_000
    assert got["lost"] == 0 and got["doubled"] == 0 and got["errors_shown"] == 0


def test_coverage_spreads_the_work(bench, tmp_path):
    got = bench.coverage(tmp_path, people=34, each=20)
    assert got["overlap1_checks0.0"]["distinct_triplets"] >= 660
    assert set(got["overlap3_checks0.1"]["people_per_triplet"]) <= {"1", "2", "3"}
