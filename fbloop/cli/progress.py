"""What a run shows on stderr while it works: one bar per counted stage, a spinner for the rest.

A run goes through up to three kinds of stage, and each is shown as what it is:

* **answers** — a bar over the budget (``ans``), with the live PCC and the design's bound;
* **the final fit** — a bar of its own over the fit's steps (``step``), with its PCC and loss;
  a fit that converges before its step limit ends its bar with "converged";
* **uncounted work** (loading a target, the L-BFGS polish, the rank choice, an exact solve) —
  a spinner line with the elapsed time, redrawn by a thread so that it never looks frozen.

The last line states what happened: answers, why it stopped, the PCC and the time.
Nothing here computes anything the run needs; :mod:`fbloop.loop` reports
:class:`fbloop.loop.Progress` events and this module draws them.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator

from tqdm import tqdm

SPIN = "|/-\\"
SPIN_EVERY_S = 0.25  # a spinner's redraw period
DELAY_S = 0.5  # nothing is drawn for work shorter than this (a quick command prints only its result)


class Spinner:
    """A one-line spinner with the elapsed time, redrawn from a thread until :meth:`close`."""

    def __init__(self, text: str, file=None, disable: bool = False, delay: float = DELAY_S,
                 leave: bool = True) -> None:
        self.text, self.file, self.disable, self.leave = text, file or sys.stderr, disable, leave
        self.t0 = time.perf_counter()
        self._stop = threading.Event()
        self._bar: tqdm | None = None
        self._delay = delay
        self._thread = None if disable else threading.Thread(target=self._spin, daemon=True)
        if self._thread is not None:
            self._thread.start()

    def _spin(self) -> None:
        if self._stop.wait(self._delay):
            return  # done before it was worth drawing
        self._bar = tqdm(total=None, file=self.file, desc=f"{self.text} {SPIN[0]}", bar_format="{desc} [{elapsed}]",
                         dynamic_ncols=True, leave=self.leave)
        i = 1
        while True:
            self._bar.set_description_str(f"{self.text} {SPIN[i % len(SPIN)]}", refresh=False)
            self._bar.refresh()
            i += 1
            if self._stop.wait(SPIN_EVERY_S):
                break

    def close(self, final: str | None = None) -> None:
        """Stop spinning; a drawn line ends as ``final`` (or the text with its time), or is cleared
        (``leave=False``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._bar is not None:
            elapsed = time.perf_counter() - self.t0
            self._bar.set_description_str(final or f"{self.text}: {elapsed:.1f}s", refresh=False)
            self._bar.bar_format = "{desc}"
            self._bar.close()
            self._bar = None


@contextlib.contextmanager
def spinner(text: str, quiet: bool = False, leave: bool = False) -> Iterator[Spinner]:
    """``with spinner("loading target rfm"):`` — a spinner while the block runs, if it runs > 0.5 s;
    cleared when it ends unless ``leave`` (the command's own output says what was done)."""
    s = Spinner(text, disable=quiet, leave=leave)
    try:
        yield s
    finally:
        s.close()


class RunProgress:
    """Draws one run's :class:`~fbloop.loop.Progress` events; call it with each, then :meth:`close`."""

    def __init__(self, label: str, bound: int | None, quiet: bool = False, file=None) -> None:
        self.label, self.bound, self.quiet = label, bound, quiet
        self.file = file or sys.stderr
        self.t0 = time.perf_counter()
        self._answers: tqdm | None = None
        self._fit: tqdm | None = None
        self._spin: Spinner | None = None
        self._last = None  # the last event seen
        self.fit_steps: int | None = None
        self.fit_total: int | None = None

    # -- each kind of event
    def __call__(self, event) -> None:
        if self.quiet:
            self._last = event
            return
        if event.stage == "done":
            self._last = event
            return
        if event.stage is not None:
            self._end_counted()
            self._end_spin()
            self._spin = Spinner(f"{self.label}: {event.stage}", file=self.file)
        elif event.fit is not None:
            self._end_spin()
            self._fit_event(event)
        else:
            self._end_spin()
            self._answer_event(event)
        self._last = event

    def _answer_event(self, event) -> None:
        if self._answers is None:
            self._answers = tqdm(total=event.budget, desc=self.label, unit="ans", file=self.file,
                                 dynamic_ncols=True, delay=DELAY_S)
        bar = self._answers
        bar.update(event.answers - bar.n)
        post = {"bound": self.bound if self.bound is not None else "—"}
        if event.pcc is not None:
            post["pcc"] = f"{event.pcc:.6f}"
        bar.set_postfix(post, refresh=False)

    def _fit_event(self, event) -> None:
        done, total = event.fit
        if self._answers is not None:  # every answer is in: that bar ends where the answers stopped
            self._answers.close()
            self._answers = None
        if self._fit is None:
            self._fit = tqdm(total=total, desc=f"{self.label}: final fit", unit="step", file=self.file,
                             dynamic_ncols=True, delay=DELAY_S)
        self._fit.update(done - self._fit.n)
        self.fit_steps, self.fit_total = done, total
        self._fit.set_postfix({"pcc": f"{event.pcc:.6f}" if event.pcc is not None else "—",
                               "loss": f"{event.loss:.3g}" if event.loss is not None else "—"}, refresh=False)

    # -- closing
    def _end_counted(self) -> None:
        if self._answers is not None:
            self._answers.close()
            self._answers = None
        if self._fit is not None:
            if self._fit.n < (self._fit.total or 0):  # the small fit stops once the loss stops falling
                self._fit.set_postfix_str(f"{self._fit.postfix}, converged" if self._fit.postfix else "converged",
                                          refresh=False)
            self._fit.close()
            self._fit = None

    def _end_spin(self) -> None:
        if self._spin is not None:
            self._spin.close()
            self._spin = None

    def close(self, stopped: str | None = None, failed: bool = False) -> None:
        """End every bar and write the final line: answers, why the run stopped, PCC, time.

        ``failed``: the run ended with an error (which the caller prints); the line then
        says how far it had got.
        """
        self._end_counted()
        self._end_spin()
        if self.quiet or self._last is None:
            return
        self.file.write(self.final_line(stopped, failed) + "\n")
        self.file.flush()

    def final_line(self, stopped: str | None = None, failed: bool = False) -> str:
        e = self._last
        elapsed = time.perf_counter() - self.t0
        if failed:
            return f"{self.label}: stopped by an error after {e.answers} answers, {elapsed:.1f}s"
        parts = [f"{e.answers} answers" + (f" of {e.budget}" if e.answers < e.budget else "")]
        if stopped:
            parts.append(stopped)
        if self.fit_steps is not None:
            parts.append(f"final fit {self.fit_steps} steps")
        parts.append(f"PCC {e.pcc:.6f}" if e.pcc is not None else "no PCC")
        parts.append(f"{elapsed:.1f}s")
        return f"{self.label}: done, " + ", ".join(parts)
