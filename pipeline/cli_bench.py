"""`posfeed bench ...`: the benchmarks, each side by side with its baseline in the same run.

The measuring is in :mod:`pipeline.benchmarks`; these commands parse options, run one benchmark,
optionally rewrite its generated block of ``docs/BENCHMARKS.md`` and print the result.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import click

__all__ = ["bench"]


def print_json(data: Any) -> None:
    """Print one JSON document to stdout."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


# the optional packages each benchmark needs (from the `dev` extra): numpy generates workloads,
# matplotlib plots the scaling
_BENCH_NEEDS = {"e2e": ("numpy", "matplotlib"), "ledger": ("numpy", "matplotlib"),
                "all": ("numpy", "matplotlib")}


@click.group()
def bench() -> None:
    """Benchmarks, each side by side with its baseline in the same run."""


def _needs_extra(verb: str) -> None:
    """Exit 78 naming the `dev` extra when a package ``bench VERB`` needs is missing.

    Checked when the benchmark starts, not before its options are parsed, so `--help` works
    without the extra.
    """
    import importlib.util

    from pipeline.errors import MissingExtraError

    for module in _BENCH_NEEDS.get(verb, ()):
        if importlib.util.find_spec(module) is None:
            raise MissingExtraError(f"posfeed bench {verb}", "dev", module)


def _emit_benchmark(section: str, data: Any, *, docs: Path | None, update_docs: Callable[[Path, str], None],
                    as_json: bool) -> None:
    """Write a benchmark's markdown section into ``docs`` if asked, then print it or its JSON."""
    if docs is not None:
        update_docs(docs, section)
    if as_json:
        print_json(data)
    else:
        click.echo(section)


def _reproduce_command(*, leave_out: Collection[str] = ()) -> str:
    """The running bench command with every option that differs from its default (for the docs).

    ``--update-docs`` and ``--json`` change where results go, not what is measured: never shown.
    """
    ctx = click.get_current_context()
    words = [f"posfeed bench {ctx.info_name}"]
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in {"update_docs", "as_json", *leave_out}:
            continue
        value = ctx.params[param.name or ""]
        if value is None or value == param.default:
            continue
        flag = param.opts[0]
        if param.is_flag:
            words.append(flag)
        else:
            words.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
    return " ".join(words)


@bench.command("transform")
@click.option("--input", "input_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Online Retail parquet [default: ../shared/datasets/online_retail_I/"
                   "online_retail_I_2010-2011.parquet beside the repository; synthetic data of the "
                   "same shape when it is absent].")
@click.option("--rows", type=click.IntRange(min=1), default=None,
              help="Use the first N rows (synthetic input: generate N rows).")
@click.option("--synthetic", is_flag=True, help="Use generated data of the same shape, not the file.")
@click.option("--repeat", type=click.IntRange(min=1), default=3, show_default=True,
              help="Rounds of (a) and (b), alternating, a fresh process each; the best run counts.")
@click.option("--naive-repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runs of the naive baseline (c).")
@click.option("--update-docs", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the results into this file's Transform section (docs/BENCHMARKS.md).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def bench_transform(input_path: Path | None, rows: int | None, synthetic: bool, repeat: int,
                    naive_repeat: int, update_docs: Path | None, as_json: bool) -> None:
    """Transform vs bare polars.read_csv vs a naive csv + pydantic script, on Online Retail."""
    from pipeline.benchmarks import transform as bench_module

    report = bench_module.run_transform_benchmark(input_path=input_path, rows=rows, synthetic=synthetic,
                                                  repeat=repeat, naive_repeat=naive_repeat)
    command = _reproduce_command(leave_out=("input_path",))  # a local path: the docs name the dataset
    section = bench_module.markdown_section(report, command=command)
    _emit_benchmark(section, report, docs=update_docs, update_docs=bench_module.update_docs,
                    as_json=as_json)


@bench.command("poslog")
@click.option("--size-mb", type=click.FloatRange(min=0.01), default=100.0, show_default=True,
              help="Size of the generated POSLog file.")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Rounds of every variant, a fresh process each; the best run counts.")
@click.option("--update-docs", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the results into this file's POSLog section (docs/BENCHMARKS.md).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def bench_poslog(size_mb: float, repeat: int, update_docs: Path | None, as_json: bool) -> None:
    """POSLog XML vs the same line items as CSV: line items per second and peak memory."""
    from pipeline.benchmarks import poslog as bench_module

    report = bench_module.run_poslog_benchmark(size_mb=size_mb, repeat=repeat)
    section = bench_module.markdown_section(report, command=_reproduce_command())
    _emit_benchmark(section, report, docs=update_docs, update_docs=bench_module.update_docs,
                    as_json=as_json)


@bench.command("submit")
@click.option("--events", type=click.IntRange(min=1), default=20000, show_default=True,
              help="Events our sender delivers in (a).")
@click.option("--naive-events", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Events the naive one-per-request loop delivers in (a).")
@click.option("--latency-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Sandbox latency per request in (a); (a) also runs once with none.")
@click.option("--limit", type=click.IntRange(min=1), default=600, show_default=True,
              help="Requests per minute the sandbox allows in (b).")
@click.option("--limited-seconds", type=click.FloatRange(min=1), default=45.0, show_default=True,
              help="How long (b) keeps the limit busy.")
@click.option("--limited-latency-ms", type=click.FloatRange(min=0), default=50.0, show_default=True,
              help="Sandbox latency per request in (b).")
@click.option("--update-docs", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the results into this file's Submit section (docs/BENCHMARKS.md).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def bench_submit(events: int, naive_events: int, latency_ms: float, limit: int, limited_seconds: float,
                 limited_latency_ms: float, update_docs: Path | None, as_json: bool) -> None:
    """Our sender vs a naive one-event-per-request loop; and how busy it keeps a rate limit."""
    from pipeline.benchmarks import submit as bench_module

    report = bench_module.run_submit_benchmark(
        events=events, naive_events=naive_events, latency_ms=latency_ms, limit=limit,
        limited_latency_ms=limited_latency_ms, limited_seconds=limited_seconds)
    section = bench_module.markdown_section(report, command=_reproduce_command())
    _emit_benchmark(section, report, docs=update_docs, update_docs=bench_module.update_docs,
                    as_json=as_json)


@bench.command("fetch")
@click.option("--size-mb", type=click.FloatRange(min=0.001), default=200, show_default=True,
              help="Size of the served file in MiB.")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Downloads per client, alternating who goes first; the best counts.")
@click.option("--update-docs", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the results into this file's Fetch section (docs/BENCHMARKS.md).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def bench_fetch(size_mb: float, rounds: int, update_docs: Path | None, as_json: bool) -> None:
    """SFTP fetch vs OpenSSH's sftp client, same file from a loopback sshd, in the same run."""
    from pipeline.benchmarks import fetch as bench_module

    result = bench_module.run_fetch_benchmark(size_mb, rounds=rounds)
    section = bench_module.markdown_section(result, command=_reproduce_command())
    _emit_benchmark(section, result.to_dict(), docs=update_docs, update_docs=bench_module.update_docs,
                    as_json=as_json)


def _sizes(value: str) -> tuple[int, ...]:
    """'100000,1M,3m' -> (100000, 1000000, 3000000)."""
    sizes = []
    for part in value.replace("_", "").split(","):
        part = part.strip().lower()
        if not part:
            continue
        scale = {"k": 1_000, "m": 1_000_000}.get(part[-1], 1)
        try:
            sizes.append(int(float(part[:-1] if scale > 1 else part) * scale))
        except ValueError as exc:
            raise click.BadParameter(f"not a size: {part!r}", param_hint="--scaling") from exc
    return tuple(sizes)


@bench.command("e2e")
@click.option("--line-items", type=click.IntRange(min=100), default=None,
              help="Line items (rows across all files) of the measured day [default: 1000000; with "
                   "--full, the largest scaling point].")
@click.option("--scaling", default=None, metavar="N,N,...",
              help="Also measure at these sizes, each in a fresh process, and plot time and peak "
                   "memory (e.g. 100000,1000000,3000000 or 0.1M,1M,3M).")
@click.option("--full", is_flag=True,
              help="The whole suite: scaling at the default sizes plus the side-by-side transform, "
                   "submit and fetch comparisons; writes into --out (default docs/bench).")
@click.option("--latency-ms", type=float, default=5.0, show_default=True,
              help="Sandbox latency per request.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write e2e.json, e2e.md and scaling.png into this folder.")
@click.option("--profile", is_flag=True,
              help="Profile the measured run (cProfile) into --out/profile-e2e.txt and .pstats.")
@click.option("--update-docs", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Rewrite the generated sections of this file (docs/BENCHMARKS.md) from the results.")
@click.option("--dry-run", is_flag=True,
              help="Stop before submit (fetch, transform, dedup, ledger, reports): the data path "
                   "alone.")
@click.option("--guest-share", type=click.FloatRange(0, 1), default=None,
              help="Share of checkouts without a customer (each is a request of its own) "
                   "[default: 0.143, as in UCI Online Retail].")
def bench_e2e(line_items: int | None, scaling: str | None, full: bool, latency_ms: float, as_json: bool,
              out: Path | None, profile: bool = False, update_docs: Path | None = None,
              dry_run: bool = False, guest_share: float | None = None) -> None:
    """A chain's day from a real SFTP server to the sandbox platform: per-stage time and memory."""
    _needs_extra("e2e")
    import signal

    from pipeline.benchmarks.e2e import FULL_LINE_ITEMS, FULL_SCALING, run_suite
    from pipeline.benchmarks.e2e_report import render_text
    from pipeline.benchmarks.e2e_report import update_docs as write_docs
    from pipeline.benchmarks.workload import GUEST_SHARE

    # SIGTERM unwinds like Ctrl-C, so the sshd, the sandbox and the temporary files are cleaned up
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sizes = _sizes(scaling) if scaling is not None else (FULL_SCALING if full else ())
    if line_items is None:
        line_items = FULL_LINE_ITEMS
    if (full or profile) and out is None:
        out = Path("docs/bench")
    command = ["posfeed", "bench", "e2e", f"--line-items {line_items}"]
    command += [f"--scaling {','.join(str(s) for s in sizes)}"] if scaling is not None else []
    command += ["--full"] if full else []
    command += [f"--latency-ms {latency_ms:g}"] if latency_ms != 5.0 else []
    command += [f"--out {out}"] if out is not None else []
    command += ["--profile"] if profile else []
    command += [f"--update-docs {update_docs}"] if update_docs is not None else []
    command += ["--dry-run"] if dry_run else []
    command += [f"--guest-share {guest_share:g}"] if guest_share is not None else []
    report = run_suite(line_items=line_items, scaling=sizes, side_by_side=full,
                       latency_seconds=latency_ms / 1000, out=out, command=" ".join(command),
                       profile=profile, dry_run=dry_run,
                       guest_share=GUEST_SHARE if guest_share is None else guest_share)
    if update_docs is not None:
        write_docs(update_docs, report)
    if as_json:
        print_json(report)
    else:
        click.echo(render_text(report))
    if not dry_run and not (report["e2e"]["balanced"] and report["e2e"]["sandbox_matches_ledger"]):
        raise click.ClickException("the run did not balance or the sandbox disagrees with the ledger")


@bench.command("ledger")
@click.option("--prefill", type=click.IntRange(min=100), default=1_000_000, show_default=True,
              help="Line items of the day that fills the grown ledger first.")
@click.option("--line-items", type=click.IntRange(min=100), default=300_000, show_default=True,
              help="Line items of the day measured against both ledgers.")
@click.option("--rounds", type=click.IntRange(min=1), default=2, show_default=True,
              help="Runs against each ledger (order empty, grown, grown, empty, ...).")
@click.option("--update-docs", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the results into this file's Scaling section (docs/BENCHMARKS.md).")
@click.option("--postgres-url", metavar="URL", default=None,
              help="Instead: the day against an empty SQLite ledger and this PostgreSQL database, "
                   "alternating, side by side (each run in a scope of its own; nothing is deleted).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def bench_ledger(prefill: int, line_items: int, rounds: int, update_docs: Path | None,
                 postgres_url: str | None, as_json: bool) -> None:
    """Does a bigger ledger cost time? One day against an empty and a filled ledger, alternating.
    With --postgres-url: what a PostgreSQL ledger costs against SQLite, on the same day."""
    _needs_extra("ledger")
    from pipeline.benchmarks.e2e import run_ledger_backends, run_ledger_growth
    from pipeline.benchmarks.e2e_report import (
        render_ledger_backends,
        render_ledger_growth,
        update_ledger_backends_docs,
        update_ledger_growth_docs,
    )

    if postgres_url is not None:
        backends = run_ledger_backends(postgres_url, line_items=line_items, rounds=rounds)
        command = _reproduce_command(leave_out={"postgres_url", "prefill"}) + " --postgres-url URL"
        _emit_benchmark(render_ledger_backends(backends, command=command), backends,
                        docs=update_docs, update_docs=update_ledger_backends_docs, as_json=as_json)
        if not all(r["balanced"] and r["sandbox_matches_ledger"] for r in backends["runs"]):
            raise click.ClickException("a run did not balance or the sandbox disagrees with the ledger")
        return
    report = run_ledger_growth(prefill=prefill, line_items=line_items, rounds=rounds)
    _emit_benchmark(render_ledger_growth(report, command=_reproduce_command()), report, docs=update_docs,
                    update_docs=update_ledger_growth_docs, as_json=as_json)
    if not all(r["balanced"] and r["sandbox_matches_ledger"] for r in report["runs"]):
        raise click.ClickException("a run did not balance or the sandbox disagrees with the ledger")


@bench.command("all")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("docs/bench"),
              show_default=True, help="Write e2e.json, e2e.md and scaling.png into this folder.")
@click.option("--update-docs", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("docs/BENCHMARKS.md"), show_default=True,
              help="Rewrite the generated sections of this file from the results.")
@click.pass_context
def bench_all(ctx: click.Context, as_json: bool, out: Path, update_docs: Path) -> None:
    """The whole suite in one run (`bench e2e --full`), sized to fit 10 minutes on 2 cores."""
    _needs_extra("all")
    from pipeline.benchmarks.e2e import FULL_LINE_ITEMS

    ctx.invoke(bench_e2e, line_items=FULL_LINE_ITEMS, scaling=None, full=True, latency_ms=5.0,
               as_json=as_json, out=out, profile=False, update_docs=update_docs)
