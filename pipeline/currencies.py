"""Money as text: each currency's ISO 4217 minor units, and amounts shown with them.

Totals are kept per currency everywhere (a sum of GBP and EUR means nothing); this module only
decides how one currency's amount is written. It never rounds: an amount with more digits than
its currency's minor units (a unit price of 0.125 GBP) keeps them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal

__all__ = ["MINOR_UNITS", "minor_units", "money_text", "single_currency_amounts"]

# ISO 4217 minor units where they differ from 2 (every other code has 2)
MINOR_UNITS: dict[str, int] = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0,
    "RWF": 0, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3, "CLF": 4, "UYW": 4,
}
_DEFAULT = 2


def minor_units(currency: str | None) -> int:
    """Decimal places of ``currency`` (2 for an unknown or missing code)."""
    return MINOR_UNITS.get((currency or "").strip().upper(), _DEFAULT)


def money_text(value: Decimal | None, currency: str | None) -> str:
    """``value`` with its currency's minor units (``12.50`` GBP, ``1500`` JPY, ``1.250`` KWD);
    more places only when the amount has them (never rounded); ``""`` for None."""
    if value is None:
        return ""
    value = value if value != 0 else abs(value)  # no "-0.00"
    exponent = value.normalize().as_tuple().exponent
    places = minor_units(currency)
    if isinstance(exponent, int):
        places = max(places, -exponent)
    return f"{value:.{places}f}"


def single_currency_amounts(
    currencies: Mapping[str, Mapping[str, str]], keys: Sequence[str]
) -> dict[str, str | None]:
    """The top-level ``amount_*`` keys of a summary whose ``currencies`` are given: the one
    currency's amounts, ``0.00`` when there is none, None when there are several (a sum of two
    currencies means nothing)."""
    if len(currencies) > 1:
        return dict.fromkeys(keys)
    only = next(iter(currencies.values()), {})
    return {key: only.get(key, "0.00") for key in keys}
