"""Which process may write files: rank zero, as Lightning decides it (RANK, LOCAL_RANK,
SLURM_PROCID, JSM_NAMESPACE_RANK at start; the strategy's own rank once DDP is set up)."""

from __future__ import annotations


def is_global_zero() -> bool:
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0
