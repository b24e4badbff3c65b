"""Simulated people for tests: they answer a run's annotation queue through the app's own functions
(:func:`fbloop.agents.people.next_query` and :func:`~fbloop.agents.people.submit`), in a thread.
Triplets and tuple questions (closest of k, rank k, odd one out) alike, exactly from ``Φ*``."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from fbloop.agents import people
from fbloop.agents.choice import option_distances
from fbloop.records import Queries
from fbloop.store import Store
from fbloop.targets.load import load_target


class Annotators(threading.Thread):
    """Simulated people answering the run's queue exactly from ``Φ*``, one answer every ``pause`` s."""

    def __init__(self, db: Path, pause: float = 0.02, target: str = "synthetic:p=8,rank=3",
                 run_id: str = "R"):
        super().__init__(daemon=True)
        self.db, self.pause, self.run_id = db, pause, run_id
        self.factor = load_target(target).factor
        self.n = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with Store(self.db) as store:
                while not self.stop.is_set():
                    if not self.answer_one(store):
                        self.stop.wait(0.05)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def answer_one(self, store: Store) -> bool:
        for who in ("ann", "bo"):
            q = people.next_query(store, self.run_id, who)
            if q is None:
                continue
            choice = exact_answer(store.load_queries(self.run_id, [q.seq]), self.factor)
            self.n += people.submit(store, self.run_id, q.seq, who, choice, 900.0, q.token)
            time.sleep(self.pause)
            return True
        return False


def exact_answer(batch: Queries, factor: np.ndarray):
    """The answer to the one question in ``batch`` under ``Φ* = V Vᵀ``, in the form's terms
    (:func:`fbloop.agents.people.answer_value`)."""
    if batch.kind == "triplet":
        a = batch.a.to_dense()
        d_ab, d_ac = (float((((x.to_dense() - a) @ factor) ** 2).sum()) for x in (batch.b, batch.c))
        return "first" if d_ab < d_ac else "second" if d_ac < d_ab else "equal"
    d = option_distances(batch, factor)[0]  # (k,): each candidate's distance, or each item's pair without it
    order = np.argsort(d, kind="stable") + 1
    return [int(j) for j in order] if batch.kind == "rank" else int(order[0])
