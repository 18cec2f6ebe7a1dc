"""Methods as data: each is a small record of how clients treat masks (ALGORITHMS.md §3)."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Method:
    sparse: bool                   # keeps masks on the maskable tensors at all
    client_sparse_learning: bool   # clients run SL (prune / redistribute / regrow) during local training
    per_client_masks: bool         # each client keeps its own mask across rounds (NST)
    report_pruned: bool            # also evaluate the global model magnitude-pruned back to d (NST)
    sensitivity_stage: bool = False  # FLASH stage 1 chooses the layer densities of the first mask
    next_mask: bool = False          # the server recomputes its mask with NEXT_MASK every r_int rounds (JMWST)
    readjust: bool = False           # FedDST: magnitude-pruned init, periodic client readjustment, union pruning


METHODS = {
    "dense": Method(sparse=False, client_sparse_learning=False, per_client_masks=False, report_pruned=False),
    "pdst": Method(sparse=True, client_sparse_learning=False, per_client_masks=False, report_pruned=False),
    "spdst": Method(sparse=True, client_sparse_learning=False, per_client_masks=False, report_pruned=False,
                    sensitivity_stage=True),
    "jmwst": Method(sparse=True, client_sparse_learning=True, per_client_masks=False, report_pruned=False,
                    sensitivity_stage=True, next_mask=True),
    "nst": Method(sparse=True, client_sparse_learning=True, per_client_masks=True, report_pruned=True),
    "feddst": Method(sparse=True, client_sparse_learning=False, per_client_masks=False, report_pruned=False,
                     readjust=True),
}
