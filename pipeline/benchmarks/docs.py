"""Writing a benchmark's generated figures into its section of docs/BENCHMARKS.md."""

from __future__ import annotations

from pathlib import Path

__all__ = ["replace_generated_block"]


def replace_generated_block(path: Path, section: str, *, start: str, end: str, heading: str) -> None:
    """Put ``section`` between the ``start`` and ``end`` markers of ``path``.

    Without the markers the block goes at the end of the ``## heading`` section (which is added at
    the end of the file when missing). Text outside the block, including other sections, is kept.
    """
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    block = f"{start}\n{section}\n{end}"
    title = f"\n## {heading}\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _old, after = rest.split(end, 1)
        text = before + block + after
    elif title in f"\n{text}":
        begin = f"\n{text}".index(title)  # offset in text of the heading's line
        following = text.find("\n## ", begin + 1)
        stop = following + 1 if following != -1 else len(text)
        head, tail = text[:stop].rstrip("\n"), text[stop:]
        text = f"{head}\n\n{block}\n" + (f"\n{tail}" if tail else "")
    else:
        text = text.rstrip() + ("\n\n" if text else "") + f"## {heading}\n\n{block}\n"
    path.write_text(text, encoding="utf-8")
