"""Queries: what to ask next.

- :mod:`.designs`: the paper's four designs and the random triplet design, as chunked generators;
- :mod:`.pivots`: the adaptive pivot design;
- :mod:`.catalogue`: every design by name, its query count and bound (:func:`make_design`);
- :mod:`.active`: adaptive strategies that choose triplets under the current ``Φ̂``;
- :mod:`.active_tuples`: the same for closest-of-k, rank-k and odd-one-out questions;
- :mod:`.sources`: where a run's next chunk comes from (a fixed design, an active strategy scored
  in the background, or what a killed run had stored) and the prequential readout.

The records a query chunk travels in, :class:`fbloop.records.Queries`, sit below every layer.
"""
