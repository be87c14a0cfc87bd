"""Benchmarks that print figures (`discofl-p2p bench NAME`), never timed tests.

Each module measures and renders; `discofl_p2p.commands.bench` runs them:
`gas` (contract calls), `ml` (training and aggregation), `p2p` (blob transfer,
all-to-all, memory), `scenarios` (whole tasks against a plain loop), `robustness`
(a sweep of attacks, adversary fractions, data splits and defences over plain loops).
"""
