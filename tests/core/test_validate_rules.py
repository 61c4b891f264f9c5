"""The rule families of pipeline/core/validate/ assemble into the catalog's order of precedence.

``rules.row_rules`` puts the families together; a row keeps the first rule it breaks, so putting
a family in the wrong place silently changes which code a row gets. Checked to fail by moving
``*amount_rules(feed)`` before ``*code_rules(feed)`` in ``row_rules``.
"""

from __future__ import annotations

from itertools import groupby

from pipeline.core.rejects import CATALOG, MEMBER_CODES, RejectCode
from pipeline.core.validate import row_rules, transaction_rules
from tests.core.helpers import NOW, feed


def test_the_rules_run_in_catalog_order() -> None:
    rules = [*row_rules(feed(), NOW), *transaction_rules(feed())]
    in_order = [code for code, _ in groupby(r.code for r in rules)]  # a family's rules share a code
    expected = [c for c in CATALOG if c not in MEMBER_CODES
                and c not in (RejectCode.SIBLING_REJECTED, RejectCode.COPY_OF_REJECTED)]
    assert in_order == expected


def test_every_rule_has_its_own_name() -> None:
    names = [r.name for r in [*row_rules(feed(), NOW), *transaction_rules(feed())]]
    assert len(names) == len(set(names))
