"""Stages of a run, each gluing one edge (source, ledger, sink, report files) to the pure core.

``fetch`` (source → staging + ledger files), ``transform`` (core transform → ledger rows),
``submit`` (ledger queue → sink → ledger outcomes), ``report`` (ledger → report files).
"""
