"""Aggregation strategies: when an update is admissible, how much it weighs,
and when a buffer is complete.

- :mod:`.fedbuff` — asynchronous buffered aggregation (the default).
- :mod:`.fedavg_sync` — synchronous rounds with over-selection.

Both fold updates into a :class:`~aggregation_service.buffer.Buffer`; the
server optimizer (``aggregation_service.optimizers``) turns a complete buffer
into the next version.
"""

from aggregation_service.strategies.fedavg_sync import SyncRound, round_outcome
from aggregation_service.strategies.fedbuff import staleness_weight

__all__ = ["SyncRound", "round_outcome", "staleness_weight"]
