"""Federated learning's pieces beside its strategy (strategies/federated.py): the round planner
(which clients, how long, who drops out: rounds.py), secure aggregation (secagg.py) and the
Shamir sharing it uses (shamir.py)."""
