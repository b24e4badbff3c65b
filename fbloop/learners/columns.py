"""Where the learner keeps the answers it was given (:class:`_Columns`)."""

from __future__ import annotations

import numpy as np
import torch


class _Columns:
    """Rows of answers in preallocated tensors that double when full.

    Each column is ``(n,)`` or ``(n, s)``; a chunk with wider rows widens the
    stored ones (padding: index 0, value 0), a narrower one is padded. Appending
    copies only the chunk (amortised ``O(chunk)``); :meth:`view` and
    :meth:`take` read the first ``n`` rows without copying everything stored.
    """

    def __init__(self, dtypes: tuple[torch.dtype, ...], device: torch.device):
        self.dtypes, self.device = dtypes, device
        self.cols: list[torch.Tensor] | None = None
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def append(self, *arrays: np.ndarray) -> None:
        k = len(arrays[0])
        if self.cols is None:
            self.cols = [torch.zeros((0,) + a.shape[1:], dtype=dt, device=self.device)
                         for a, dt in zip(arrays, self.dtypes)]
        cap = self.cols[0].shape[0]
        if self.n + k > cap:
            cap = max(2 * cap, self.n + k, 1024)
        for j, a in enumerate(arrays):
            col = self.cols[j]
            shape = (cap,) + tuple(max(x, y) for x, y in zip(a.shape[1:], col.shape[1:]))
            if shape != col.shape:  # grow (rows double) or widen: one copy of what is stored
                grown = col.new_zeros(shape)
                grown[(slice(0, self.n),) + tuple(slice(0, w) for w in col.shape[1:])] = col[:self.n]
                self.cols[j] = col = grown
            new = torch.as_tensor(a).to(self.device, self.dtypes[j])
            col[(slice(self.n, self.n + k),) + tuple(slice(0, w) for w in a.shape[1:])] = new
        self.n += k

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
