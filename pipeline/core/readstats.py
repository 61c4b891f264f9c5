"""What a reader reads besides lines: transactions it skipped and line items by kind.

CSV, JSON Lines and Parquet readers turn every row into a line and count nothing here. The POSLog
reader (:mod:`pipeline.core.poslog`) counts the transactions it does not send (control, voided,
suspended...) and every ``LineItem`` by kind, so a run can account for all of a file. The counts
travel beside the lines frame and reach the summaries as ``skipped_by_kind`` and
``line_items_by_kind``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["ReadStats"]


@dataclass
class ReadStats:
    """Transactions a reader skipped, by kind, and the line items it read, by kind."""

    skipped_by_kind: Counter[str] = field(default_factory=Counter)
    line_items_by_kind: Counter[str] = field(default_factory=Counter)

    def add(self, other: ReadStats) -> None:
        """Add another file's counts to these."""
        self.skipped_by_kind.update(other.skipped_by_kind)
        self.line_items_by_kind.update(other.line_items_by_kind)

    def summary(self) -> dict[str, dict[str, int]]:
        """The two counts as the summaries show them (sorted by kind)."""
        return {
            "skipped_by_kind": dict(sorted(self.skipped_by_kind.items())),
            "line_items_by_kind": dict(sorted(self.line_items_by_kind.items())),
        }
