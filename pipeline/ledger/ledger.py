"""The :class:`Ledger`: one object over one ledger database, composed of the concepts' parts."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.ledger.backlog import Backlogs
from pipeline.ledger.connection import open_sqlite
from pipeline.ledger.db import Db
from pipeline.ledger.errors import LedgerTooNewError
from pipeline.ledger.files import Files
from pipeline.ledger.location import is_postgres_url, masked_url
from pipeline.ledger.problems import Problems
from pipeline.ledger.recording import Recording
from pipeline.ledger.rejects import Rejects
from pipeline.ledger.returns import Returns
from pipeline.ledger.runs import Runs
from pipeline.ledger.scrub import Scrubbing
from pipeline.ledger.totals import Totals
from pipeline.ledger.transactions import Transactions
from pipeline.ledger.transitions import Transitions
from pipeline.ledger.voids import Voids


class Ledger(
    Runs, Files, Recording, Transitions, Transactions, Returns, Voids, Totals, Rejects, Scrubbing, Backlogs,
    Problems,
):
    """The ledger (a SQLite file or a PostgreSQL database): open it, change it only through its
    verb-named transitions.

    Each part (runs, files, recording, transitions, transactions, returns, voids, totals, rejects,
    scrubbing, backlog, problems) is a class of its own module whose methods share this ledger's
    one :class:`~pipeline.ledger.db.Db`.
    """

    def __init__(self, location: Path | str, *, private_copy: bool = False):
        """Open the ledger at ``location``: a SQLite file path, or a ``postgresql://`` URL (the
        driver, psycopg, is imported only then). ``private_copy`` (PostgreSQL only) opens a copy
        of this session's own that nothing else sees, for a dry run."""
        self._db: Db
        self.url: str | None = None
        self.path: Path | None
        if is_postgres_url(location):
            try:
                from pipeline.ledger.postgres import open_postgres, open_postgres_copy
            except ImportError as exc:
                raise ConfigError(f"a PostgreSQL ledger needs the driver psycopg ({exc}): "
                                  "pip install 'posfeed[postgres]'") from exc

            self.url = str(location)
            self.path = None
            opener = open_postgres_copy if private_copy else open_postgres
        else:
            self.path = Path(location)
        try:
            self._db, self.schema_version = opener(self.url) if self.url else open_sqlite(Path(location))
        except LedgerTooNewError as exc:  # named here, where the location is known
            raise LedgerTooNewError(f"{self.location}: {exc}") from None

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._db.dialect

    @property
    def location(self) -> str:
        """Where the ledger is, for messages: the file, or the URL without its password."""
        return masked_url(self.url) if self.url else str(self.path)

    def close(self) -> None:
        """Close the ledger (a crash without close loses nothing committed).

        A SQLite file's write-ahead log is checkpointed into the database and truncated first, so
        the file alone holds the ledger's state (and no stale page images linger in the WAL).
        """
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
