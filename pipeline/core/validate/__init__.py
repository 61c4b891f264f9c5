"""Validation: typed values and one reject code per row, as named polars expressions.

:func:`validate` adds typed columns (prefix ``v_``), ``reject_code``, ``reject_field``,
``reject_reason``, ``amount`` (the signed line amount, 0 when unparseable) and ``business_day``
(the business date as a Date, derived from the timestamp when the export has none).

Each rule is a :class:`Rule`: a name, its :class:`~pipeline.core.rejects.RejectCode`, the field it
judges, a boolean expression that is true where a row breaks it and a reason naming the value.
Rules run in catalog order and a row keeps the first rule it breaks. A transaction is atomic: one
failing line rejects the whole transaction, its other lines get ``R099_SIBLING_REJECTED``.

The modules, in the order the work is done:

- ``typed``: every field as a typed value, from ``numbers`` (number fields), ``timestamps``
  (instants and time zones) and ``control`` (control characters in ids);
- ``transactions``: lines grouped into transactions (copies of repeated blocks, returns,
  distinct values per transaction); ``amounts``: the signed amount of each line;
- ``rules``: the rules in catalog order, by family from ``field_rules`` (is each field there and
  readable?) and ``value_rules`` (are the values plausible?), and the transaction rules;
- ``engine``: applies the rules and explains each reject (:func:`validate`).
"""

from __future__ import annotations

from pipeline.core.validate.engine import validate
from pipeline.core.validate.numbers import NUMBER_FIELDS
from pipeline.core.validate.rule import Rule
from pipeline.core.validate.rules import row_rules, transaction_rules
from pipeline.core.validate.transactions import GROUP_ID, GROUP_KEYS

__all__ = ["GROUP_ID", "GROUP_KEYS", "NUMBER_FIELDS", "Rule", "row_rules", "transaction_rules", "validate"]
