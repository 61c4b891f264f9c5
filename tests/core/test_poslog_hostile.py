"""The POSLog reader against hostile and broken files: DTDs and entities, XInclude, deep nesting,
huge text, wrong encodings, concatenated documents, other namespace prefixes, foreign money.

Each bad file is unreadable with a reason naming it (and the line where it can), never expanded,
fetched or crashed on, and the other files of the run are still read. Memory is measured as the
peak RSS of a fresh process reading the file, against the same process reading a small good file.
"""

from __future__ import annotations

import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.core.transform import TransformResult, transform_files
from tests.core.helpers import NOW
from tests.core.test_poslog import ARTS, document, feed, member, retail, sale, write

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
GOOD = retail(1, sale(1, "A", "1.00"), grand="1.00")
_PROLOG = '<?xml version="1.0" encoding="UTF-8"?>\n'


def body(*transactions: str) -> str:
    """A document without its XML declaration (for a DOCTYPE to go in between)."""
    return document(*transactions).split("\n", 1)[1]


def with_good(tmp_path: Path, bad: Path) -> TransformResult:
    """Run ``bad`` with a good file after it: the good one is still read."""
    good = write(tmp_path, document(GOOD), "good.xml")
    result = transform_files([bad, good], feed(), now=NOW)
    assert result.summary["transactions_valid"] == 1 and Decimal(result.summary["amount_valid"]) == 1
    return result


def only_unreadable(result: TransformResult, name: str) -> str:
    assert [e.file for e in result.unreadable] == [name]
    return result.unreadable[0].reason


def billion_laughs() -> str:
    entities = '<!ENTITY a0 "laughlaughlaugh">\n' + "".join(
        f'<!ENTITY a{n} "{f"&a{n - 1};" * 10}">\n' for n in range(1, 10)
    )
    laughs = retail(1, sale(1, "&a9;", "1.00"), grand="1.00")
    return f"{_PROLOG}<!DOCTYPE POSLog [\n{entities}]>\n" + body(laughs)


def quadratic_blowup() -> str:
    entity = f'<!DOCTYPE POSLog [<!ENTITY q "{"x" * 50_000}">]>\n'
    return _PROLOG + entity + body(retail(1, sale(1, "&q;" * 5_000, "1.00"), grand="1.00"))


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text("TOP-SECRET-CONTENT", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda s: billion_laughs(), id="billion_laughs"),
        pytest.param(lambda s: quadratic_blowup(), id="quadratic_blowup"),
        pytest.param(lambda s: f'{_PROLOG}<!DOCTYPE POSLog [<!ENTITY x SYSTEM "{s.as_uri()}">]>\n'
                     + body(retail(1, sale(1, "&x;", "1.00"), grand="1.00")), id="xxe"),
        pytest.param(lambda s: f'{_PROLOG}<!DOCTYPE POSLog [<!ENTITY % p SYSTEM "{s.as_uri()}"> %p;]>\n'
                     + body(GOOD), id="parameter_entity"),
        pytest.param(lambda s: f'{_PROLOG}<!DOCTYPE POSLog SYSTEM "{s.as_uri()}">\n' + body(GOOD),
                     id="external_dtd_file"),
        pytest.param(lambda s: f'{_PROLOG}<!DOCTYPE POSLog PUBLIC "-//X//DTD X//EN" '
                     '"http://127.0.0.1:9/poslog.dtd">\n' + body(GOOD), id="external_dtd_network"),
        pytest.param(lambda s: f"{_PROLOG}<!DOCTYPE POSLog>\n" + body(GOOD), id="bare_doctype"),
    ],
)
def test_a_doctype_is_never_expanded_or_fetched_and_makes_the_file_unreadable(
    tmp_path: Path, secret: Path, make: object
) -> None:
    bad = write(tmp_path, make(secret), "dtd.xml")  # type: ignore[operator]
    result = with_good(tmp_path, bad)
    reason = only_unreadable(result, "dtd.xml")
    assert "DOCTYPE" in reason and "never expanded or fetched" in reason
    assert "TOP-SECRET" not in reason and "TOP-SECRET" not in str(result.lines.rows())


def test_an_xinclude_is_never_processed_and_makes_the_file_unreadable(tmp_path: Path, secret: Path) -> None:
    include = (f'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="{secret.as_uri()}" '
               'parse="text"/>')
    bad = write(tmp_path, document(GOOD, retail(2, sale(1, "B" + include, "1.00"), grand="1.00")), "xi.xml")
    result = with_good(tmp_path, bad)
    reason = only_unreadable(result, "xi.xml")
    assert "XInclude" in reason and "after transaction 1" in reason
    assert "TOP-SECRET" not in str(result.lines.rows())


# ---- memory: a fresh process's peak RSS against its size on a small good file ----------------

_MEASURE = """
import resource, sys
from pathlib import Path
from pipeline.core.transform import transform_files
from tests.core.helpers import NOW
from tests.core.test_poslog import feed
result = transform_files([Path(sys.argv[1])], feed(), now=NOW)
print(len(result.unreadable), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def peak_rss(path: Path) -> tuple[int, int]:
    """(unreadable files, peak RSS in bytes) of a fresh process running ``path`` through a feed."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    unreadable, rss = done.stdout.split()
    return int(unreadable), int(rss)


def write_big(path: Path, head: str, filler: bytes, size: int, tail: str) -> None:
    """``head``, ``size`` bytes of ``filler`` repeated, ``tail``: written without holding it whole."""
    with path.open("wb") as out:
        out.write(head.encode())
        chunk = filler * (MIB // len(filler))
        for _ in range(size // len(chunk)):
            out.write(chunk)
        out.write(tail.encode())


def test_entity_bombs_stay_within_memory_bounded_by_the_file(tmp_path: Path) -> None:
    _, baseline = peak_rss(write(tmp_path, document(GOOD), "good.xml"))
    for name, text in (("laughs.xml", billion_laughs()), ("quadratic.xml", quadratic_blowup())):
        path = write(tmp_path, text, name)
        unreadable, rss = peak_rss(path)
        assert unreadable == 1
        assert rss - baseline < 4 * path.stat().st_size + 16 * MIB, (name, rss - baseline)


@pytest.mark.parametrize("where", ["text", "attribute"])
def test_a_200_mb_text_or_attribute_is_unreadable_in_memory_bounded_by_a_fraction_of_it(
    tmp_path: Path, where: str
) -> None:
    _, baseline = peak_rss(write(tmp_path, document(GOOD), "good.xml"))
    head, tail = document(GOOD, "@@").split("@@")
    if where == "text":
        head += "<Transaction><OperatorID>"
        tail = "</OperatorID></Transaction>" + tail
    else:
        head += '<Transaction Note="'
        tail = '"/>' + tail
    path = tmp_path / "huge.xml"
    write_big(path, head, b"0123456789abcdef", 200 * MIB, tail)
    unreadable, rss = peak_rss(path)
    assert unreadable == 1
    assert rss - baseline < path.stat().st_size // 4, rss - baseline


# ---- structure and encoding -----------------------------------------------------------------


def test_deep_nesting_is_unreadable_naming_the_line_and_the_transaction_before(tmp_path: Path) -> None:
    deep = "B" + "<x>" * 100_000 + "</x>" * 100_000
    bad = write(tmp_path, document(GOOD, retail(2, sale(1, deep, "1.00"), grand="1.00")), "deep.xml")
    reason = only_unreadable(with_good(tmp_path, bad), "deep.xml")
    assert "at line 4," in reason and "after transaction 1 (which starts at line 3)" in reason
    assert "nested more than" in reason and "XML_PARSE_HUGE" not in reason


def test_a_file_not_in_the_encoding_it_declares_names_the_line(tmp_path: Path) -> None:
    text = document(GOOD, retail(2, sale(1, "Caf\u00e9", "1.00"), grand="1.00"))
    bad = tmp_path / "latin1.xml"
    bad.write_bytes(text.encode("latin-1"))  # declares UTF-8
    reason = only_unreadable(with_good(tmp_path, bad), "latin1.xml")
    assert "at line 4," in reason and "after transaction 1 (which starts at line 3)" in reason
    assert "not in the encoding it declares (UTF-8)" in reason


def test_bytes_the_declared_encoding_does_not_have_name_that_encoding(tmp_path: Path) -> None:
    text = document(GOOD).replace('encoding="UTF-8"', 'encoding="ISO-8859-7"')
    bad = tmp_path / "greek.xml"
    bad.write_bytes(text.replace("<POSLog ", '<POSLog Note="\xff" ').encode("latin-1"))  # 0xFF: not Greek
    reason = only_unreadable(with_good(tmp_path, bad), "greek.xml")
    assert "not in the encoding it declares (ISO-8859-7)" in reason


def test_an_unknown_declared_encoding_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "enc.xml"
    bad.write_bytes(document(GOOD).replace('encoding="UTF-8"', 'encoding="X-NOPE-9"').encode())
    reason = only_unreadable(with_good(tmp_path, bad), "enc.xml")
    assert "line 1" in reason and "X-NOPE-9" in reason


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(lambda t: b"\xef\xbb\xbf" + t.encode(), id="utf8_bom"),
        pytest.param(lambda t: t.replace('"UTF-8"', '"UTF-16"').encode("utf-16"), id="utf16_bom"),
        pytest.param(lambda t: t.replace('"UTF-8"', '"ISO-8859-1"').encode("latin-1"), id="latin1_declared"),
    ],
)
def test_a_bom_or_a_declared_encoding_reads_as_utf8_does(tmp_path: Path, encode: object) -> None:
    text = document(GOOD, retail(2, sale(1, "Caf\u00e9", "2.00"), grand="2.00"))
    plain = transform_files([write(tmp_path, text, "plain.xml")], feed(), now=NOW)
    other = tmp_path / "other.xml"
    other.write_bytes(encode(text))  # type: ignore[operator]
    result = transform_files([other], feed(), now=NOW)
    assert not result.unreadable and result.summary["transactions_valid"] == 2
    assert result.items.drop("source_file", strict=False).equals(
        plain.items.drop("source_file", strict=False))


@pytest.mark.parametrize(
    "second",
    [
        pytest.param(lambda: document(GOOD), id="two_documents"),
        pytest.param(lambda: body(GOOD), id="two_roots"),
        pytest.param(lambda: "garbage\n", id="text_after_the_root"),
    ],
)
def test_more_than_one_document_in_a_file_is_unreadable_never_half_read(
    tmp_path: Path, second: object
) -> None:
    first = document(retail(7, sale(1, "A", "1.00"), grand="1.00"))
    bad = write(tmp_path, first + second(), "two.xml")  # type: ignore[operator]
    reason = only_unreadable(with_good(tmp_path, bad), "two.xml")
    assert "at line 5," in reason and "after transaction 1 (which starts at line 3)" in reason
    assert "after the end of the POSLog root element" in reason and "one document per file" in reason


def test_a_transaction_split_across_two_files_makes_both_unreadable(tmp_path: Path) -> None:
    text = document(GOOD, retail(2, sale(1, "B", "2.00"), grand="2.00"))
    cut = text.index("<RetailTransaction>", text.index("<SequenceNumber>2<"))
    first, second = write(tmp_path, text[:cut], "a.xml"), write(tmp_path, text[cut:], "b.xml")
    result = transform_files([first, second], feed(), now=NOW)
    assert sorted(e.file for e in result.unreadable) == ["a.xml", "b.xml"]
    assert result.summary["rows_in"] == 0  # transaction 1 of a.xml is not sent from a half-read log
    reasons = {e.file: e.reason for e in result.unreadable}
    assert "after transaction 1 (which starts at line 3)" in reasons["a.xml"]
    assert "the root element is <RetailTransaction>" in reasons["b.xml"]


def test_prefixed_namespaces_give_what_the_default_namespace_gives(tmp_path: Path) -> None:
    text = document(GOOD, retail(2, sale(1, "B", "2.00"), sale(2, "C", "0.50"), grand="2.25"))
    default = transform_files([write(tmp_path, text, "d.xml")], feed(), now=NOW)
    root = f'<POSLog xmlns="{ARTS}">'
    prefixed = re.sub(r"<(/?)(?=[A-Za-z])", r"<\1p:", text.split("\n", 1)[1].replace(root, "@@"))
    prefixed = _PROLOG + prefixed.replace("@@", f'<p:POSLog xmlns:p="{ARTS}">')
    # and a transaction that declares the namespace again, under another prefix
    prefixed = prefixed.replace("<p:Transaction>", f'<q:Transaction xmlns:q="{ARTS}">', 1).replace(
        "</p:Transaction>", "</q:Transaction>", 1)
    other = transform_files([write(tmp_path, prefixed, "d.xml")], feed(), now=NOW)
    assert "<p:LineItem>" in prefixed and not other.unreadable
    for frame in ("lines", "checkouts", "items"):
        assert getattr(other, frame).equals(getattr(default, frame)), frame


# ---- money in another currency --------------------------------------------------------------


def foreign(element: str, currency: str, text: str, attribute: str = "Currency") -> str:
    return text.replace(f"<{element}>", f'<{element} {attribute}="{currency}">', 1)


@pytest.mark.parametrize(
    ("element", "attribute"),
    [("ExtendedAmount", "Currency"), ("ActualSalesUnitPrice", "Currency"), ("DiscountAmount", "CurrencyCode"),
     ("Amount", "Currency")],
)
def test_an_amount_in_another_currency_rejects_its_transaction(
    tmp_path: Path, element: str, attribute: str
) -> None:
    modifier = ('<RetailPriceModifier><Amount>0.10</Amount></RetailPriceModifier>'
                if element == "Amount" else "")
    line = sale(1, "B", "2.00", discount="0.10" if element == "DiscountAmount" else None)
    line = line.replace("</Quantity>", "</Quantity>" + modifier)
    mixed = retail(2, sale(2, "C", "1.00"), foreign(element, "EUR", line, attribute), grand="2.90")
    path = write(tmp_path, document(GOOD, mixed))
    result = transform_files([path], feed(validation={"currencies": ["USD", "EUR"]}), now=NOW)
    assert result.summary["transactions_valid"] == 1 and Decimal(result.summary["amount_valid"]) == 1
    rejects = result.rejects
    assert set(rejects.get_column("reject_code")) == {"R016_MIXED_CURRENCIES"}
    reason = rejects.get_column("reject_reason").to_list()[0]
    assert f"<{element} {attribute}=\"EUR\">" in reason and "USD" in reason and "line 4" in reason


def test_a_total_in_another_currency_rejects_its_transaction(tmp_path: Path) -> None:
    text = document(retail(1, sale(1, "A", "1.00"), grand="1.00"))
    grand = 'TotalType="TransactionGrandAmount"'
    text = text.replace(grand, grand + ' Currency="EUR"')
    both = feed(validation={"currencies": ["USD", "EUR"]})
    result = transform_files([write(tmp_path, text)], both, now=NOW)
    assert result.summary["transactions_valid"] == 0
    assert set(result.rejects.get_column("reject_code")) == {"R016_MIXED_CURRENCIES"}


def test_amounts_naming_the_transactions_own_currency_are_read_as_usual(tmp_path: Path) -> None:
    line = foreign("ExtendedAmount", "USD", sale(1, "A", "1.00"))
    text = document(retail(1, line, grand="1.00").replace("<Total ", '<Total Currency="USD" '))
    result = transform_files([write(tmp_path, text)], feed(), now=NOW)
    assert result.summary["transactions_valid"] == 1 and Decimal(result.summary["amount_valid"]) == 1


def test_without_a_currency_code_the_amounts_own_currency_is_the_transactions(tmp_path: Path) -> None:
    line = foreign("ExtendedAmount", "EUR", sale(1, "A", "1.00"))
    text = document(retail(1, line, grand="1.00")).replace("<CurrencyCode>USD</CurrencyCode>", "")
    result = transform_files([write(tmp_path, text)], feed(validation={"currencies": ["EUR"]}), now=NOW)
    assert result.summary["transactions_valid"] == 1
    assert result.checkouts.get_column("currency").to_list() == ["EUR"]


def test_a_tender_in_another_currency_is_not_money_of_the_sale(tmp_path: Path) -> None:
    tender = ('<LineItem><SequenceNumber>9</SequenceNumber><Tender TenderType="Cash">'
              '<Amount Currency="CAD">1.40</Amount></Tender></LineItem>')
    text = document(retail(1, sale(1, "A", "1.00"), tender, grand="1.00"))
    result = transform_files([write(tmp_path, text)], feed(), now=NOW)
    assert result.summary["transactions_valid"] == 1 and Decimal(result.summary["amount_valid"]) == 1


def test_amounts_in_another_currency_than_the_feeds_default_are_rejected(tmp_path: Path) -> None:
    line = foreign("ExtendedAmount", "EUR", sale(1, "A", "1.00"))
    text = document(retail(1, line, grand="1.00")).replace("<CurrencyCode>USD</CurrencyCode>", "")
    the_feed = feed(validation={"currencies": ["USD", "EUR"]})
    the_feed = the_feed.model_copy(update={"format": the_feed.format.model_copy(update={"defaults": {
        "currency": "USD"}})})
    result = transform_files([write(tmp_path, text)], the_feed, now=NOW)
    assert result.summary["transactions_valid"] == 0
    assert set(result.rejects.get_column("reject_code")) == {"R016_MIXED_CURRENCIES"}


def test_the_word_doctype_in_a_comment_or_text_is_no_doctype(tmp_path: Path) -> None:
    text = document(retail(1, sale(1, "A", "1.00"), grand="1.00").replace(
        "<Description>Item A", "<Description><![CDATA[<!DOCTYPE x>]]>Item A"))
    text = text.replace("<Transaction>", "<!-- no <!DOCTYPE here --><Transaction>", 1)
    result = transform_files([write(tmp_path, text)], feed(), now=NOW)
    assert not result.unreadable and result.summary["transactions_valid"] == 1


LOYALTY_ID = "0000000000000040000066677"
EMAIL = "jane.roe@example.com"


@pytest.mark.parametrize(("name", "broken"), [
    # a CDATA section left open: libxml2 quotes what follows it
    ("cdata.xml", retail(1, member(1, "X").replace("X", f"<![CDATA[{LOYALTY_ID}"), sale(2, "A", "1.00"),
                         grand="1.00")),
    # a comment with "--" in it: libxml2 quotes the comment
    ("comment.xml", retail(1, f"<!-- loyalty {LOYALTY_ID} -- {EMAIL} -->", sale(2, "A", "1.00"),
                           grand="1.00")),
])
def test_a_broken_file_s_reason_quotes_none_of_its_values(tmp_path: Path, name: str, broken: str) -> None:
    reason = only_unreadable(with_good(tmp_path, write(tmp_path, document(GOOD, broken), name)), name)

    assert LOYALTY_ID not in reason and EMAIL not in reason and "jane" not in reason, reason
    assert re.match(r"not well-formed XML at line \d+, column \d+, after transaction 1 ", reason), reason
    assert "\n" not in reason


@pytest.mark.parametrize("entity", ["&jane.roe;", "&nbsp;"])
def test_an_undefined_entity_is_placed_and_named_without_its_name(tmp_path: Path, entity: str) -> None:
    # before: "not well-formed XML at line 0, column 0, ...: no element found"
    broken = retail(1, member(1, "X").replace("X", f"Ann {entity} Roe"), sale(2, "A", "1.00"), grand="1.00")
    text = document(GOOD, broken)
    reason = only_unreadable(with_good(tmp_path, write(tmp_path, text, "entity.xml")), "entity.xml")

    line = next(n for n, row in enumerate(text.splitlines(), 1) if entity in row)
    placed = rf"not well-formed XML at line {line}, column [1-9]\d*, after transaction 1 "
    assert re.match(placed, reason), reason
    assert "undefined entity" in reason and entity.strip("&;") not in reason, reason
