"""When client sparse learning updates the mask: the phases a client's local
steps are cut into, for the data layer's cohort plans (data.store.cohort_layout's `phases`).

One epoch: the mask update follows the client's step floor(s/2), so phase 0 holds its steps
0..floor(s/2) and phase 1 the rest. Several epochs: one phase per epoch, updates in between.
"""
from __future__ import annotations


class MaskUpdatePhases:
    @staticmethod
    def lengths(max_steps: int, epochs: int) -> tuple[int, ...]:
        """Static phase lengths for a cohort whose longest client has `max_steps` steps per epoch."""
        if epochs == 1:
            first = max_steps // 2 + 1
            return (first, max_steps - first) if max_steps - first > 0 else (first,)
        return (max_steps,) * epochs

    @staticmethod
    def of_client(steps, epochs: int) -> list[tuple]:
        """(epoch, first step, number of steps) of each phase for a client of `steps` steps per epoch."""
        if epochs == 1:
            first = steps // 2 + 1
            return [(0, 0, first), (0, first, steps - first)]
        return [(epoch, 0, steps) for epoch in range(epochs)]


MASK_UPDATE_PHASES = MaskUpdatePhases()
