"""Transform stage of enrollment and claim feeds: validate, dedup and record every row.

The ledger's transaction machinery carries them: each row is one transaction row whose
``transaction_id`` is the record's key (the masked customer id of an enrollment, ``claim:<id>``
for a claim), whose ``transaction_type`` is ``enrollment``, ``profile`` or ``claim``, and whose
stored JSON is what the sink sends. States, in-doubt marking, reruns and reports are the
checkouts' own. Rejected rows keep their original columns with personal data masked.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from pipeline.config import Feed
from pipeline.core.members import (
    MemberRecord,
    dedup_members,
    mask_personal,
    member_records,
    missing_columns,
)
from pipeline.core.parse import read_table
from pipeline.errors import UnreadableFileError
from pipeline.ledger import Ledger, NewReject, NewTransaction, TxnState
from pipeline.logs import counted, log_event
from pipeline.progress import NullProgress, Progress
from pipeline.records import PROFILE_UPDATE
from pipeline.stages.fetch import StagedFile
from pipeline.stages.transform import TransformOutcome

__all__ = ["transform_members"]

log = logging.getLogger(__name__)

_ZERO = Decimal(0)
_STATE = {"new": TxnState.QUEUED, "update": TxnState.QUEUED, "duplicate": TxnState.DUPLICATE,
          "conflict": TxnState.CONFLICT}


def _rows(staged: StagedFile, feed: Feed) -> list[tuple[int, dict[str, object]]]:
    frame = read_table(staged.fetched.path.read_bytes(), feed.format, source_name=staged.record.name)
    missing = missing_columns([c for c in frame.columns if c != "source_line"], feed,
                              file=staged.record.name)
    if missing:
        raise UnreadableFileError(staged.record.name, f"required columns missing: {', '.join(missing)}")
    return [(int(row.pop("source_line")), row) for row in frame.iter_rows(named=True)]


def _signups(ledger: Ledger, feed: Feed, records: Sequence[MemberRecord]
             ) -> dict[str, list[tuple[str, str | None]]]:
    """The sign-ups the ledger holds of the members of ``records``, as (state, content hash),
    oldest first (an enrollment feed's; nothing for claims)."""
    if feed.records != "enrollments":
        return {}
    keys = sorted({r.key for r in records if r.key and r.payload is not None})
    return {key: [(r.state.value, r.content_hash) for r in rows]
            for key, rows in ledger.signups(feed.scope, keys).items()}


def transform_members(
    ledger: Ledger,
    run_id: str,
    feed: Feed,
    staged: Sequence[StagedFile],
    *,
    now: datetime,
    progress: Progress | None = None,
) -> TransformOutcome:
    """Record every row of the staged enrollment or claim files; returns the rows to send."""
    progress = progress or NullProgress()
    outcome = TransformOutcome()
    progress.start("transform", len(staged))
    for item in staged:
        name = item.record.name
        try:
            rows = _rows(item, feed)
        except (UnreadableFileError, OSError) as exc:
            error = exc if isinstance(exc, UnreadableFileError) else UnreadableFileError(name, str(exc))
            log.warning("unreadable file %s: %s", error.file, error.reason)
            ledger.mark_file_unreadable(item.record.id, error.reason)
            outcome.unreadable.append(error)
            progress.advance("transform")
            continue
        records = member_records(rows, feed, today=now.date())
        keys = {r.key for r in records if r.key}
        # a changed enrollment sent as a profile update has a key of its own (core.members)
        keys |= {f"{r.key}#{r.content_hash[:12]}" for r in records if r.key and r.content_hash}
        known: dict[str, set[str]] = {}
        for key, content_hash in ledger.known(feed.scope, keys):
            known.setdefault(key, set()).add(content_hash)
        dedup_members(records, known, feed, signups=_signups(ledger, feed, records))
        kind = "enrollment" if feed.records == "enrollments" else "claim"
        transactions: list[NewTransaction] = []
        rejects: list[NewReject] = []
        totals: Counter[tuple[str, str]] = Counter()
        for record in records:
            totals[(record.store_id or "", record.business_date or "")] += 1
            state = TxnState.REJECTED if record.payload is None else _STATE[record.status]
            sent = state is TxnState.QUEUED and record.payload is not None
            transactions.append(NewTransaction(
                transaction_id=record.key,
                state=state,
                source_lines=(record.source_line,),
                rows=1,
                amount=_ZERO,
                store_id=record.store_id,
                business_date=record.business_date,
                transaction_type=PROFILE_UPDATE if record.status == "update" else kind,
                content_hash=record.content_hash,
                reject_code=record.reject_code,
                checkout=json.dumps(record.payload, ensure_ascii=False) if sent else None,
            ))
            if record.reject_code is not None:
                rejects.append(NewReject(
                    source_line=record.source_line,
                    transaction_id=record.key,
                    store_id=record.store_id,
                    business_date=record.business_date,
                    code=record.reject_code,
                    field=record.reject_field,
                    reason=record.reject_reason,
                    amount=_ZERO,
                    original=mask_personal(record.original, feed.format.columns),
                ))
        queued = ledger.record_file(
            run_id, item.record, transactions=transactions, rejects=rejects,
            totals=[(store, day, count, count, _ZERO) for (store, day), count in totals.items()],
        )
        outcome.to_send.extend(queued)
        states = Counter(str(t.state) for t in transactions)
        log_event(log, "file", f"{name}: {counted(len(records), f'{kind} row')}, {len(queued)} queued, "
                  f"{len(rejects)} rejected", feed=feed.name, file=name, rows=len(records),
                  queued=len(queued), rejected_rows=len(rejects), states=dict(sorted(states.items())))
        progress.advance("transform")
    # a changed repeat holds the version queued before it as a conflict too (as for checkouts)
    still_queued = ledger.rows_in_state(outcome.to_send, TxnState.QUEUED)
    outcome.to_send = [i for i in outcome.to_send if i in still_queued]
    progress.finish("transform")
    return outcome
