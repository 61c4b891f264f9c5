"""A local emulator of the target platforms (Antavo, CRM.COM) as a real HTTP server.

:mod:`pipeline.sandbox.state` holds what every platform shares (counters, faults, latency, rate
limit, accepted transactions); each platform module provides ``routes(state)``;
:mod:`pipeline.sandbox.server` composes them (``build_app``, ``SandboxServer``, ``serve``).
"""
