"""What lines gave back, per product: the one sum both platforms' return checks compare with
what a sale bought (Antavo: :mod:`pipeline.sinks.antavo_returns`, CRM.COM:
:mod:`pipeline.sinks.crmcom_returns`). What is still refundable of a sale is what it bought
minus what its earlier returns gave back, both summed here."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal
from typing import Protocol

__all__ = ["ProductLine", "per_product"]


class ProductLine(Protocol):
    """A line of a sale or return: a product, its units and its money (positive magnitudes)."""

    @property
    def product_id(self) -> str: ...

    @property
    def quantity(self) -> Decimal: ...

    @property
    def amount(self) -> Decimal: ...


def per_product(groups: Iterable[Iterable[ProductLine]]) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
    """Units and money by product, summed over every line of ``groups`` (a sale's lines, or the
    lines of its returns); a product none of them has reads as 0."""
    units: dict[str, Decimal] = defaultdict(Decimal)
    money: dict[str, Decimal] = defaultdict(Decimal)
    for lines in groups:
        for line in lines:
            units[line.product_id] += line.quantity
            money[line.product_id] += line.amount
    return units, money
