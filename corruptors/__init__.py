"""The data layer: shard I/O, built-in worlds, and bias injection/removal.

- :mod:`~inheritlab.corruptors.shards` — list, read (errors name shard and member; bad samples
  counted under a ceiling), split across ranks × loader workers, write WebDataset shards.
- :mod:`~inheritlab.corruptors.world` — the procedural image–caption world (ID/OOD splits).
- :mod:`~inheritlab.corruptors.chain` — corruptor specs, :class:`Chain`, and
  :func:`condition_data`, the data stage of a cell (plans, manifest, counters).
- corruptor types: :mod:`noise` (label/caption noise, pools), :mod:`duplication`
  (duplicates, contamination), :mod:`balance` (imbalance, rebalancing), :mod:`dedup`,
  :mod:`text` (token noise, a topic corpus).

Submodules are imported explicitly (``from inheritlab.corruptors.chain import build_chain``),
so importing the package stays cheap.
"""
