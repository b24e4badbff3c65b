"""Where the learner keeps the answers it was given (:class:`_Columns`)."""

from __future__ import annotations

import numpy as np
import torch


class _Columns:
    """Rows of answers in preallocated tensors that double when full, up to ``max_rows``.

    Each column is ``(n,)`` or ``(n, s)``; a chunk with wider rows widens the
    stored ones (padding: index 0, value 0), a narrower one is padded. Appending
    copies only the chunk (amortised ``O(chunk)``); :meth:`view` and
    :meth:`take` read the first ``n`` rows without copying everything stored.

    With ``max_rows`` the memory held stays bounded whatever the run's size: once
    ``max_rows`` rows are held, each further row replaces a held one with the
    probability that keeps the held rows a uniform sample of every row given
    (reservoir sampling, Vitter's algorithm R, drawn from ``seed``). ``seen``
    counts every row given; ``n`` the rows held.
    """

    def __init__(self, dtypes: tuple[torch.dtype, ...], device: torch.device, max_rows: int | None = None,
                 seed: int = 0):
        self.dtypes, self.device, self.max_rows = dtypes, device, max_rows
        self.cols: list[torch.Tensor] | None = None
        self.n = 0
        self.seen = 0
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.n

    def append(self, *arrays: np.ndarray) -> None:
        k = len(arrays[0])
        room = k if self.max_rows is None else min(k, self.max_rows - self.n)
        if room:
            self._fit(arrays, self.n + room)
            self._write([a[:room] for a in arrays], slice(self.n, self.n + room))
            self.n += room
        if room < k:  # the reservoir is full: row i (counting every row given) replaces a held one w.p. max_rows/(i+1)
            i = self.seen + room + np.arange(k - room)
            slot = (self.rng.random(k - room) * (i + 1)).astype(np.int64)
            hit = np.flatnonzero(slot < self.max_rows)
            if len(hit):
                # one slot drawn twice in this chunk: the later row wins, as one row after another would
                slots, last = np.unique(slot[hit][::-1], return_index=True)
                rows = room + hit[::-1][last]
                self._fit(arrays, self.n)
                self._write([a[rows] for a in arrays], torch.as_tensor(slots, device=self.device), clear=True)
        self.seen += k

    def _fit(self, arrays: tuple[np.ndarray, ...], rows: int) -> None:
        """Room for ``rows`` rows as wide as ``arrays``' (rows double, up to ``max_rows``; widths grow)."""
        if self.cols is None:
            self.cols = [torch.zeros((0,) + a.shape[1:], dtype=dt, device=self.device)
                         for a, dt in zip(arrays, self.dtypes)]
        cap = self.cols[0].shape[0]
        if rows > cap:
            cap = max(2 * cap, rows, 1024)
            if self.max_rows is not None:
                cap = min(cap, self.max_rows)
        for j, a in enumerate(arrays):
            col = self.cols[j]
            shape = (cap,) + tuple(max(x, y) for x, y in zip(a.shape[1:], col.shape[1:]))
            if shape != col.shape:  # grow (rows double) or widen: one copy of what is stored
                grown = col.new_zeros(shape)
                grown[(slice(0, self.n),) + tuple(slice(0, w) for w in col.shape[1:])] = col[:self.n]
                self.cols[j] = grown

    def _write(self, arrays: list[np.ndarray], rows: slice | torch.Tensor, clear: bool = False) -> None:
        """``arrays`` into ``rows`` (fresh zero rows, or held ones to ``clear`` first: a narrower row is padded)."""
        for j, a in enumerate(arrays):
            col = self.cols[j]
            if clear:
                col[rows] = 0
            new = torch.as_tensor(a).to(self.device, self.dtypes[j])
            col[(rows,) + tuple(slice(0, w) for w in a.shape[1:])] = new

    def view(self) -> tuple[torch.Tensor, ...]:
        """Everything stored; index columns as int64."""
        return tuple(self._long(c[:self.n]) for c in self.cols)

    def rows(self, lo: int, hi: int) -> tuple[torch.Tensor, ...]:
        """Rows ``lo:hi``; index columns as int64 (only these rows are converted)."""
        return tuple(self._long(c[lo:hi]) for c in self.cols)

    def take(self, sel: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """Rows ``sel`` (all rows when None); index columns as int64."""
        return self.view() if sel is None else tuple(self._long(c[sel]) for c in self.cols)

    @staticmethod
    def _long(c: torch.Tensor) -> torch.Tensor:
        return c.long() if c.dtype == torch.int32 else c
