"""Circular data sieving (SpFDE, Yuan et al., NeurIPS 2022) as a kgrow method.

A fixed share of the training set is held out in a queue; every few epochs
the samples the model found easiest (fewest forgetting events, counted from
the train step's own predictions) swap places with the queue's head.

Functional form (numpy, plain data): `forgetting_events`,
`count_forgetting`, `initial_removal`, `sieve_update`, `plan_sieve`, ...
In-step counting: `ForgettingTracker` (a prediction hook). Callback:
`DataSieving` (also in `kgrow.callbacks`). Bench method: `sieve`.

Example:
    >>> from kgrow.methods.data_sieving import plan_sieve
    >>> plan_sieve(50000, 0.25, 0.3, epochs=160).k
    3750
"""
from kgrow.methods.data_sieving.functional import (SievePlan, SieveState, count_forgetting,
                                                   default_interval, forgetting_events,
                                                   initial_removal, min_update_ratio,
                                                   plan_sieve, sieve_update, update_count,
                                                   updates_in_run, updates_to_cycle)
from kgrow.methods.data_sieving.tracker import ForgettingTracker, batch_correct
from kgrow.methods.data_sieving.callback import DataSieving

__all__ = ["DataSieving", "ForgettingTracker", "SievePlan", "SieveState", "batch_correct",
           "count_forgetting", "default_interval", "forgetting_events", "initial_removal",
           "min_update_ratio", "plan_sieve", "sieve_update", "update_count", "updates_in_run",
           "updates_to_cycle"]
