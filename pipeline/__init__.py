"""posfeed: POS transaction exports to loyalty platforms, exactly once, with reconciliation."""

__version__ = "0.1.0"
