"""The :class:`Ledger`: one object over one ledger database, composed of the concepts' parts."""

from __future__ import annotations

from pathlib import Path

from pipeline.ledger.backlog import Backlogs
from pipeline.ledger.connection import open_sqlite
from pipeline.ledger.db import Db
from pipeline.ledger.files import Files
from pipeline.ledger.problems import Problems
from pipeline.ledger.recording import Recording
from pipeline.ledger.rejects import Rejects
from pipeline.ledger.returns import Returns
from pipeline.ledger.runs import Runs
from pipeline.ledger.scrub import Scrubbing
from pipeline.ledger.totals import Totals
from pipeline.ledger.transactions import Transactions
from pipeline.ledger.transitions import Transitions


class Ledger(
    Runs, Files, Recording, Transitions, Transactions, Returns, Totals, Rejects, Scrubbing, Backlogs, Problems
):
    """The ledger file: open it, change it only through its verb-named transitions.

    Each part (runs, files, recording, transitions, transactions, returns, totals, rejects,
    scrubbing, backlog, problems) is a class of its own module whose methods share this ledger's
    one :class:`~pipeline.ledger.db.Db`.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._db: Db
        self._db, self.schema_version = open_sqlite(self.path)

    def close(self) -> None:
        """Close the file (a crash without close loses nothing committed).

        The write-ahead log is checkpointed into the database and truncated first, so the file
        alone holds the ledger's state (and no stale page images linger in the WAL).
        """
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
