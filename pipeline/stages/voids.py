"""Voids whose sale was in doubt when they came in, decided once the sale is settled.

A void naming a sale that may have reached the platform (in doubt, or failed after a request went
out) stays a plain void as it is recorded: the sale is settled by the platform, never guessed.
Such a sale goes to the target with ``voided_by`` (:func:`pipeline.stages.submit.with_voids`): it
is looked up without being sent where the target can ask (an Antavo member's transactions read
back, CRM.COM's purchase lookup): found, accepted; not found, refused (``voided_in_doubt``, never
sent). An Antavo guest's is resent as any in doubt ("transaction ID already used" if it had
landed). After each submission, :func:`settle_voided_sales` decides the voids of the sales it settled: a
sale now accepted makes its void ``void_of_sent_sale`` (to act on); a sale the platform refused is
post-voided (never sent again). Both are part of the run that settled them (origin ``settle``).
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.ledger import Ledger, TxnState
from pipeline.ledger.states import VOID_OF_SENT_SALE
from pipeline.records import VOIDED_IN_DOUBT, TransactionType
from pipeline.stages.transform import post_void_message, void_of_sent_sale_message

__all__ = ["settle_voided_sales"]


def settle_voided_sales(ledger: Ledger, scope: str, run_id: str, row_ids: Sequence[int]) -> None:
    """Decide the plain voids naming the sales among ``row_ids`` (just submitted) that settled."""
    if not row_ids or not ledger.any_voids_naming(scope):  # most scopes: no rows read again
        return
    sales = {str(t.transaction_id): t for t in ledger.transactions_by_row_id(row_ids)
             if t.transaction_type == TransactionType.SALE and t.transaction_id
             and t.state in (TxnState.ACCEPTED, TxnState.FAILED_PERMANENT)}
    if not sales:
        return
    coded: list[tuple[int, str, str]] = []
    refused: list[tuple[int, str]] = []
    for tid, voids in ledger.voids_naming(scope, sorted(sales)).items():
        sale = sales[tid]
        plain = [v for v in voids if v.last_error_code is None]
        if not plain:
            continue
        if sale.state is TxnState.FAILED_PERMANENT:
            # a sale looked up and not found keeps what the lookup said (a request of it went out)
            looked_up = sale.last_error_code == VOIDED_IN_DOUBT and sale.last_error_message
            refused.append((sale.id, str(sale.last_error_message) if looked_up
                            else post_void_message(str(plain[0].transaction_id))))
            continue
        coded += [(void.id, VOID_OF_SENT_SALE, void_of_sent_sale_message(sale)) for void in plain]
    ledger.code_voids(run_id, coded)
    ledger.post_void_sales(run_id, refused)
