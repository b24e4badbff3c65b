"""People in the loop: a run's questions queued for the annotation form, and their answers.

The form (``app.py``) is only a face for these functions:

- :func:`queue` puts a run's questions (triplets, or tuple questions: closest of ``k``,
  rank ``k``, odd one out) in the annotation queue and mixes in
  *attention checks* (questions whose answer is known) at a configurable rate;
- :func:`next_query` gives an annotator the next triplet that still wants an
  answer and is not on someone else's screen (a *lease*), in their own order
  near the queue's front; a reload or a second tab resumes the same triplet;
- :func:`submit` stores one answer as agent ``human:<name>`` (the same answers
  table and unique key every agent uses), updating the run's running totals in
  the same transaction; :func:`undo` takes the latest one back.

**Assignment** (:func:`set_assignment`): ``overlap`` different people answer each
real triplet (default 1); attention checks go to everyone. A triplet shown to
someone is leased to them for ``lease_s`` seconds (default 120 s: several times
the 5–20 s a triplet takes to read, short enough that a person who walked away
holds nothing for long); a skip is not an answer, so a skipped triplet stays open
and goes to someone else, never back to the person who skipped it.

**Access** (:func:`invite`, :func:`owner_token`, :func:`sign_in`): an invitation's
secret (``a-`` + 32 URL-safe characters, 192 random bits) signs one person in to the
runs they were invited to; the owner's (``o-`` …) opens the dashboard. The store
keeps the sha256 of each secret, never the secret. :func:`block` keeps a person's
answers in the store and out of every learner (``Store.iter_answered``).

**Names** are normalised (:func:`normalise_name`: Unicode NFKC, case-folded,
spaces collapsed; a name mixing scripts, such as a Cyrillic "а" in "аlice", is
refused), so "Alice" and "alice" are one person.

Answers are stored in the kind's value space (:mod:`fbloop.records`; :mod:`fbloop.agents.questions`
has :func:`answer_value`, :class:`Question` and the checks' construction): a triplet's sign
(``first`` +1, ``second`` −1, ``equal`` 0); closest of ``k``, the candidate ``1…k`` or ``0`` for
no clear winner; odd one out, the item ``1…3``; rank ``k``, the ranking (candidate numbers,
closest first) as its Lehmer code. A skip is stored with status ``skipped``
so it is never asked again. Everything else (a queue, a lease, undo, the token) is the same for
every kind.

**Never twice.** Every displayed question carries a fresh token. The form binds
its buttons to ``(seq, token)`` of the question on screen, so a double click or
a resubmitted form names the same question again, and the store's unique key
``(run, seq, agent, attempt)`` ignores the repeat: :func:`submit` returns
``False`` and the first answer (with its token in ``meta``) stands.

**Attention checks** sit at negative positions, outside every design's query
sequence, are marked in the ``checks`` table and are never given to a learner
(``Store.iter_answered`` leaves them out). Two kinds:

- ``identical``: one candidate *is* the reference (expected: that candidate; rank ``k``: any
  ranking that puts it first; odd one out: two items are one activation, and the third, a
  different one, is expected);
- ``lopsided``: a queued question the oracle finds very one-sided (a triplet's
  ``|Δ| / (d_ab + d_ac) ≥ LOPSIDED`` under ``Φ*``; a tuple question's first place far
  ahead of its second), shown with its candidates swapped (reversed) so it is not a
  verbatim repeat; only when the run has a ``Φ*``.
"""

from __future__ import annotations

import unicodedata
import uuid
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .. import render
from ..errors import ConfigError, StoreError
from ..records import CANDIDATE_KINDS, Queries
from ..store import Store
from ..store.crowd import passes
from .questions import KINDS, Answer, Question, answer_value, make_checks, make_tuple_checks
from .reliability import check_chance, flip_rate_from_checks

CHECK_RATE = 0.1  # share of the queue that is attention checks
MAX_NAME = 40  # characters in an annotator's name


PREFIX = "human:"  # every annotator's answers are stored as agent PREFIX + name


OVERLAP = 1  # different people asked per real triplet, by default
LEASE_S = 120.0  # seconds a shown triplet stays reserved for the person it was shown to
UNDO_S = 600.0  # how old an answer may be and still be taken back


def _scripts(name: str) -> set[str]:
    """The scripts of a name's letters (LATIN, CYRILLIC, GREEK, …), from their Unicode names."""
    return {unicodedata.name(ch, "?").split(" ")[0] for ch in name if ch.isalpha()}


def normalise_name(annotator: str) -> str:
    """An annotator's name as identity: NFKC, case-folded, inner spaces collapsed, 1–40 printable characters,
    letters of one script (so a look-alike such as Cyrillic "аlice" cannot pass for "alice")."""
    name = " ".join(unicodedata.normalize("NFKC", str(annotator)).casefold().split())
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise ConfigError(f"Expect an annotator name of 1 to {MAX_NAME} printable characters, got {annotator!r}.")
    if len(_scripts(name)) > 1:
        raise ConfigError(f"Expect an annotator name in one script, got {annotator!r} mixing "
                          f"{' and '.join(sorted(_scripts(name)))} letters.")
    return name


def agent_name(annotator: str) -> str:
    """``human:<name>`` for an annotator, the name normalised by :func:`normalise_name`."""
    return f"{PREFIX}{normalise_name(annotator)}"


def set_assignment(store: Store, run_id: str, overlap: int = OVERLAP, lease_s: float = LEASE_S) -> None:
    """How many different people answer each real triplet of a run, and how long a lease lasts."""
    if not 1 <= int(overlap) <= 50:
        raise ConfigError(f"Expect an overlap of 1 to 50 people per triplet, got {overlap}.")
    if not 5.0 <= float(lease_s) <= 3600.0:
        raise ConfigError(f"Expect a lease of 5 to 3600 seconds, got {lease_s}.")
    store.require_run(run_id)
    store.set_assignment(run_id, int(overlap), float(lease_s))


# ---------------------------------------------------------------- queueing


def queue(store: Store, run_id: str, queries: Queries, *, check_rate: float = CHECK_RATE,
          factor: np.ndarray | None = None, seed: int = 0) -> dict[str, int]:
    """Queue a run's questions (triplets, closest, rank or odd) for the annotation form, with attention
    checks mixed in.

    Queries queued before keep their place and get no new checks, so queueing
    again (a resumed run) changes nothing. About ``check_rate`` of the new queue
    entries are checks, at positions drawn from ``seed``. ``factor`` (``Φ*``'s
    factor, ``(p, k)``) enables lopsided checks. Returns ``{"queued", "checks"}``.
    """
    if queries.kind not in KINDS:
        raise ConfigError(f"The annotation form asks triplets and tuple questions ({', '.join(KINDS)}); "
                          f"queue one of those designs (--design triplet), got {queries.kind} queries.")
    if not 0.0 <= check_rate <= 0.5:
        raise ConfigError(f"Expect a check rate in [0, 0.5], got {check_rate}.")
    have = store.queued(run_id)
    new = queries.select(~np.isin(queries.seq, have))
    if len(new) == 0:
        return {"queued": 0, "checks": 0}
    n_checks = int(round(len(new) * check_rate / (1.0 - check_rate)))
    rng = np.random.default_rng([seed, len(have)])  # explicit and resume-stable
    first_seq = int(min(-1, have.min() - 1)) if len(have) else -1
    parts, checks = [new], {}
    if n_checks and new.kind == "triplet":
        check_q, checks = make_checks(new, n_checks, rng, factor, first_seq)
        parts.append(check_q)
    elif n_checks:
        check_q, checks = make_tuple_checks(new, n_checks, rng, factor, first_seq)
        parts.append(check_q)
    total = len(new) + n_checks
    # Checks at random slots, never first: an annotator's first question is a real one.
    slots = np.sort(rng.choice(np.arange(1, total), size=n_checks, replace=False)) if n_checks else []
    order = np.empty(total, dtype=np.int64)
    is_check = np.zeros(total, dtype=bool)
    is_check[slots] = True
    order[~is_check] = np.arange(len(new))
    order[is_check] = len(new) + np.arange(n_checks)
    merged = Queries.concat(parts).select(order)
    queued = store.enqueue(run_id, merged, checks)
    return {"queued": queued - n_checks, "checks": n_checks}


class People:
    """People answering in the app, as an agent: a *deferred* one (``--agent human``, or a pool's
    ``--member NAME:human``).

    :meth:`ask` queues the questions for the form (attention checks mixed in, as :func:`queue`) and
    returns at once; people answer whenever they come, each under their own name (``human:<name>``),
    and :meth:`collect` returns what has arrived since the last call, read from the store by answer id.
    A resumed run replays everything stored up to the moment it started (:meth:`stored`) and collects
    what comes after, so no answer is learnt twice or missed. Every real triplet queued counts as asked
    (a pool charges it); attention checks do not. Each person's flip rate comes from their checks
    (:meth:`noise`).
    """

    deferred = True

    def __init__(self, name: str, store: Store, check_rate: float = CHECK_RATE,
                 truth: np.ndarray | None = None, seed: int = 0, kind: str = "triplet", k: int = 2):
        self.name = name
        self.kind, self.k = kind, k  # the questions asked: what a flipped answer's chance on a check is
        self.store = store
        self.check_rate = check_rate
        self.truth = truth
        self.seed = seed
        self.run_id: str | None = None
        self.queued: set[int] = set()
        self.cursor = -1  # every answer up to this row id has been handed out (replayed or collected)

    def start(self, ledger, resumed: bool) -> None:
        """Attach to the run and read what it queued and what is answered already."""
        self.run_id = ledger.run_id
        checks = self.store.checks(self.run_id)
        self.queued = {int(s) for s in self.store.queued(self.run_id) if int(s) not in checks}
        self.cursor = self.store.last_answer_id(self.run_id)

    def _run(self) -> str:
        if self.run_id is None:
            raise ConfigError(f"Agent {self.name!r} (people) is not attached to a run; call start(ledger, resumed).")
        return self.run_id

    def stored(self):
        return self.store.iter_answered(self._run(), prefix=PREFIX, upto_id=self.cursor)

    def sources(self) -> list[str]:
        return []  # each person is a source of their own, named as their answers arrive

    def owns(self, agent: str) -> bool:
        return agent.startswith(PREFIX)

    def asked(self, start: int, stop: int) -> np.ndarray:
        return np.array(sorted(s for s in self.queued if start <= s < stop), dtype=np.int64)

    def ready(self, chunk: int) -> bool:
        """More triplets are queued while fewer than ``chunk`` wait for answers."""
        info = self.store.queue_progress(self._run())
        return info["queued"] - info["answered"] < chunk

    def ask(self, queries: Queries, attempts: dict[int, int] | None = None, factor=None) -> None:
        queue(self.store, self._run(), queries, check_rate=self.check_rate, factor=self.truth, seed=self.seed)
        self.queued.update(int(s) for s in queries.seq)

    def collect(self) -> list:
        """The answers stored since the last call (people's, attention checks and blocked people aside)."""
        top = self.store.last_answer_id(self._run())
        got = list(self.store.iter_answered(self._run(), prefix=PREFIX, after_id=self.cursor, upto_id=top))
        self.cursor = top
        return got

    def outstanding(self) -> int:
        """Queued real triplets that still want answers (the run's overlap not reached)."""
        info = self.store.queue_progress(self._run())
        return max(info["queued"] - info["answered"], 0)

    def noise(self) -> dict[str, float]:
        """Each person's flip rate from their answered attention checks (none before their first)."""
        out = {}
        chance = check_chance(self.kind, self.k)
        for rec in check_accuracy(self.store, self._run()):
            eps = flip_rate_from_checks(rec["checks"], rec["correct"], chance)
            if eps is not None:
                out[rec["agent"]] = eps
        return out

    def summary(self, final: bool = False) -> dict:
        return {}

    def asked_count(self) -> int:
        return len(self.queued)


# ---------------------------------------------------------------- asking and answering


def next_query(store: Store, run_id: str, annotator: str,
               descriptions: tuple[str, ...] | None = None) -> Question | None:
    """The next question for ``annotator`` (leased to them, see the module's docstring), or ``None`` when
    nothing is left for them. A blocked annotator gets ``None``.

    Every call issues a new token; keep the question (and its token) while it is on screen.
    """
    agent = agent_name(annotator)
    if agent in store.blocked(run_id):
        return None
    seq = store.assign(run_id, agent)
    if seq is None:
        return None
    q = store.load_queries(run_id, np.array([seq]))
    feats = lambda batch: render.features(batch, 0, descriptions)  # noqa: E731
    if q.kind in CANDIDATE_KINDS:
        reference, options = feats(q.a), tuple(feats(c) for c in q.cands)
    elif q.kind == "odd":
        reference, options = None, (feats(q.a), feats(q.b), feats(q.c))
    else:
        reference, options = feats(q.a), (feats(q.b), feats(q.c))
    return Question(run_id, seq, normalise_name(annotator), uuid.uuid4().hex, reference, options, q.kind)


def submit(store: Store, run_id: str, seq: int, annotator: str, answer: Answer, response_ms: float | None,
           token: str, clock: Literal["browser", "server"] | None = None) -> bool:
    """Store one annotator's answer to queued position ``seq``; ``False`` when they answered it already.

    ``answer`` is in the question's own terms (:func:`answer_value`): for a triplet ``first`` (+1),
    ``second`` (−1), ``equal`` (0); a candidate or item number (closest, odd); a ranking (rank); or
    ``skip`` (status ``skipped``), and is refused (:class:`ConfigError`, nothing stored) when it is
    not one the question allows. ``meta`` keeps the annotator, the response time in
    milliseconds and the question's token, and ``clock``, where that time was measured when
    the caller says (``browser``: from display to press, in the page; ``server``: from drawing
    the question to the click's arrival, network and queueing included).
    One short transaction (:meth:`Store.submit_answer`): a few indexed lookups,
    whatever the size of the queue or the number of stored answers.
    """
    shape = store.query_shape(run_id, int(seq))
    if shape is None:
        raise ConfigError(f"Position {seq} of run {run_id!r} is not in the annotation queue.")
    status, value = answer_value(*shape, answer)
    if not token:
        raise ConfigError("Expect the token of the displayed question, got an empty one.")
    agent = agent_name(annotator)
    ms = None if response_ms is None else int(response_ms)
    meta = {"annotator": agent.split(":", 1)[1], "response_ms": ms, "token": token}
    if clock is not None:
        if clock not in ("browser", "server"):
            raise ConfigError(f"Expect clock 'browser' or 'server', got {clock!r}.")
        meta["clock"] = clock
    try:
        return store.submit_answer(run_id, int(seq), agent, status, value, meta, ms)
    except StoreError as exc:
        if "not in the annotation queue" in str(exc):
            raise ConfigError(str(exc)) from exc
        raise


def undo(store: Store, run_id: str, annotator: str, within_s: float = UNDO_S) -> int | None:
    """Take back ``annotator``'s latest answer on ``run_id`` (at most ``within_s`` old): it is deleted and
    its triplet is the next one they see. Returns the position, or ``None`` when there is nothing to undo."""
    return store.undo_last(run_id, agent_name(annotator), within_s)


def waiting(store: Store, run_id: str) -> bool:
    """Whether some queued real triplet still wants answers (the run's overlap is not reached)."""
    info = store.queue_progress(run_id)
    return info["answered"] < info["queued"]


# ---------------------------------------------------------------- how annotators do


def progress(store: Store, run_id: str, annotator: str) -> dict:
    """One annotator on one run, from running totals: ``answered`` (ok, checks included: they are not told
    which were checks), ``skipped``, and the run's ``queued``, ``remaining`` (real triplets still wanting
    answers) and ``overlap``."""
    info = store.assignment(run_id)
    rows = store.annotator_stats(run_id, agent_name(annotator))
    row = rows[0] if rows else {"ok": 0, "skipped": 0, "checks": 0}
    real = info["queued"] - info["checks"]
    return {"answered": int(row["ok"]) + int(row["checks"]), "skipped": int(row["skipped"]),
            "remaining": real - info["filled"], "queued": real, "overlap": info["overlap"]}


def annotator_summary(store: Store, run_id: str) -> list[dict]:
    """Per person on a run, from running totals (no scan of answers): ``agent, answers, skipped, checks,
    correct, check_accuracy, mean_ms, total_ms`` (response times summed), ``last_at, blocked``."""
    out = []
    for r in store.annotator_stats(run_id):
        out.append({"agent": r["agent"], "answers": int(r["ok"]), "skipped": int(r["skipped"]),
                    "checks": int(r["checks"]), "correct": int(r["correct"]),
                    "check_accuracy": r["correct"] / r["checks"] if r["checks"] else None,
                    "mean_ms": r["ms_sum"] / r["ms_n"] if r["ms_n"] else None, "total_ms": float(r["ms_sum"]),
                    "last_at": r["last_at"],
                    "blocked": bool(r["blocked"])})
    return out


def block(store: Store, run_id: str, annotator: str, blocked: bool = True) -> str:
    """Block (``blocked=False``: unblock) an annotator on a run: their answers stay in the store, learners
    skip them from the next ``fbloop run`` on, and the form gives them nothing more. Returns the agent name."""
    agent = agent_name(annotator)
    store.require_run(run_id)
    store.set_blocked(run_id, agent, blocked)
    return agent


def check_accuracy(store: Store, run_id: str) -> list[dict]:
    """Per agent: attention checks answered (ok), answered correctly, and the share correct.

    Skipped checks count in ``skipped`` only; ``accuracy`` is ``None`` before a first answered check.
    """
    out: dict[str, dict] = {}
    for row in store.check_answers(run_id):
        rec = out.setdefault(row["agent"], {"agent": row["agent"], "checks": 0, "correct": 0, "skipped": 0})
        if row["status"] == "ok":
            rec["checks"] += 1
            rec["correct"] += int(passes(row["value"], row["expected"], row["expected_hi"]))
        elif row["status"] == "skipped":
            rec["skipped"] += 1
    for rec in out.values():
        rec["accuracy"] = rec["correct"] / rec["checks"] if rec["checks"] else None
    return sorted(out.values(), key=lambda r: r["agent"])


# ---------------------------------------------------------------- access: invitations and the owner's token


TOKEN_BYTES = 24  # 192 random bits, 32 URL-safe characters


def _new_token(kind: str) -> str:
    import secrets

    return f"{kind}-{secrets.token_urlsafe(TOKEN_BYTES)}"


def invite(store: Store, annotator: str, run_ids: list[str]) -> str:
    """Invite ``annotator`` to ``run_ids`` and return their new secret (shown once, never stored).

    The store keeps the secret's sha256 only. Inviting someone again issues a new secret (the
    old link stops working) and adds the runs to those they were invited to.
    """
    from ..store.crowd import token_hash

    name = normalise_name(annotator)
    if not run_ids:
        raise ConfigError(f"Invite {annotator!r} to at least one run (--run RUN).")
    for run_id in run_ids:
        store.require_run(run_id)
    token = _new_token("a")
    store.add_annotator(name, " ".join(str(annotator).split()), token_hash(token), list(run_ids))
    return token


def owner_token(store: Store, label: str = "owner") -> str:
    """A new dashboard secret for the experiments' owner (stored as its sha256); returned once."""
    from ..store.crowd import token_hash

    token = _new_token("o")
    store.add_owner_token(token_hash(token), label)
    return token


@dataclass(frozen=True)
class Access:
    """Who a link signs in: ``role`` ``annotator`` (with their ``name`` and invited ``runs``) or ``owner``."""

    role: Literal["annotator", "owner"]
    name: str | None = None
    runs: tuple[str, ...] = ()


def sign_in(store: Store, token: str | None) -> Access | None:
    """The access a link's secret grants, or ``None`` for a missing, unknown or forged one."""
    from ..store.crowd import token_hash

    if not token or len(token) > 100:
        return None
    digest = token_hash(str(token))
    if store.is_owner_token(digest):
        return Access("owner")
    who = store.annotator_by_token(digest)
    if who is None:
        return None
    runs = tuple(r for r in who["runs"] if f"{PREFIX}{who['name']}" not in store.blocked(r))
    return Access("annotator", who["name"], runs)
