"""The `posfeed` command line: parse arguments, call one library function, print.

Logs go to stderr, results to stdout (`--json` for machines). Errors from the library are mapped
to exit codes in one place, :func:`main`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import click

from pipeline.config import Settings
from pipeline.errors import EXIT_INTERNAL, PosfeedError

__all__ = ["cli", "main"]


def print_json(data: Any) -> None:
    """Print one JSON document to stdout."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def settings_of(ctx: click.Context) -> Settings:
    """The global settings chosen on the command line or in the environment."""
    settings: Settings = ctx.obj["settings"]
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--state-dir", type=click.Path(path_type=Path), envvar="POSFEED_STATE_DIR",
              help="Ledger, staging and locks [env POSFEED_STATE_DIR; default ./.posfeed].")
@click.option("--feeds-dir", type=click.Path(path_type=Path), envvar="POSFEED_FEEDS_DIR",
              help="Folder of feed TOML files [env POSFEED_FEEDS_DIR; default ./feeds].")
@click.option("--reports-dir", type=click.Path(path_type=Path), envvar="POSFEED_REPORTS_DIR",
              help="Where run reports go [env POSFEED_REPORTS_DIR; default ./reports].")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Log lines on stderr as text or JSON lines.")
@click.option("-v", "--verbose", count=True, help="More log detail (-v info, -vv debug).")
@click.version_option(package_name="posfeed")
@click.pass_context
def cli(
    ctx: click.Context,
    state_dir: Path | None,
    feeds_dir: Path | None,
    reports_dir: Path | None,
    log_format: str,
    verbose: int,
) -> None:
    """posfeed: POS transaction exports to loyalty platforms, exactly once, with reconciliation."""
    ctx.ensure_object(dict)
    ctx.obj["settings"] = Settings.from_env(
        state_dir=state_dir, feeds_dir=feeds_dir, reports_dir=reports_dir
    )
    ctx.obj["log_format"] = log_format
    ctx.obj["verbose"] = verbose
    from pipeline.logs import register_env_secrets_of_feeds, setup_logging

    setup_logging(log_format, verbose)
    register_env_secrets_of_feeds(ctx.obj["settings"].feeds_dir)


def main() -> None:
    """Entry point: run the CLI and map posfeed errors to exit codes."""
    try:
        # without standalone mode click returns ctx.exit(code)'s code instead of exiting
        code = cli.main(standalone_mode=False)
    except PosfeedError as exc:
        _fatal(f"posfeed: error: {exc}", exc.exit_code, exc)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("posfeed: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        from pipeline.logs import json_logging_active

        if json_logging_active():
            _fatal(f"posfeed: error: {exc.format_message()}", exc.exit_code, exc)
        else:
            exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        _fatal(f"posfeed: internal error: {type(exc).__name__}: {exc}", EXIT_INTERNAL, exc)
        sys.exit(EXIT_INTERNAL)
    sys.exit(code if isinstance(code, int) else 0)


def _fatal(message: str, exit_code: int, exc: BaseException) -> None:
    """The error that ends the process: a JSON line with ``--log-format json``, else plain text."""
    from pipeline.logs import json_logging_active, redact

    if json_logging_active():
        import logging

        logging.getLogger("posfeed").critical(redact(message), extra={
            "event": "fatal", "exit_code": exit_code, "error": type(exc).__name__})
        return
    click.echo(message, err=True)


# ---- commands ---------------------------------------------------------------------------------
# Each command below parses its options, calls one library function and prints the result.


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the feeds as JSON.")
@click.pass_context
def feeds(ctx: click.Context, as_json: bool) -> None:
    """List every feed, validate it and show its next run time.

    A bad feed file exits 78, naming the file, the key path and the problem.
    """
    from pipeline.check_commands import feeds_exit_code, format_feeds_table, load_feed_rows

    rows = load_feed_rows(settings_of(ctx).feeds_dir)
    if as_json:
        print_json(rows)
    else:
        click.echo(format_feeds_table(rows))
    for row in rows:
        if not row["ok"]:
            error = row["error"]
            click.echo(f"posfeed: error: {error['file']}: {error['key'] or '(file)'}: {error['problem']}",
                       err=True)
    ctx.exit(feeds_exit_code(rows))


@cli.command()
@click.argument("files", nargs=-1, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--feed", "feed_name", metavar="NAME",
              help="Read the files as this feed does (name in the feeds folder, or a path); "
                   "default: the canonical layout, format from the file suffix.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary (or --codes) as JSON.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Write checkouts, checkout items, rejects.csv and summary.json here.")
@click.option("--codes", is_flag=True, help="Print the reject code catalog and exit.")
@click.pass_context
def check(ctx: click.Context, files: tuple[Path, ...], feed_name: str | None, as_json: bool,
          out_dir: Path | None, codes: bool) -> None:
    """Parse, validate, normalize and dedup one local file, with no network.

    Exit 0 when every row is valid, 65 when rows were rejected, conflicts found or a file could
    not be read, 78 for a configuration error.
    """
    from pipeline.check_commands import (
        check_exit_code,
        check_files,
        codes_text,
        format_check_summary,
        write_check_outputs,
    )
    from pipeline.core.rejects import catalog_rows

    if codes:
        if as_json:
            print_json(catalog_rows())
        else:
            click.echo(codes_text())
        ctx.exit(0)
    if not files:
        raise click.UsageError("give at least one FILE (or --codes)")
    result = check_files(files, feed_name=feed_name, feeds_dir=settings_of(ctx).feeds_dir)
    if out_dir is not None:
        write_check_outputs(result, out_dir)
    if as_json:
        print_json(result.summary)
    else:
        click.echo(format_check_summary(result))
    ctx.exit(check_exit_code(result))


@cli.command()
@click.option("--feed", "feed_names", multiple=True, metavar="NAME",
              help="A feed name (from the feeds folder) or a feed file path; repeatable.")
@click.option("--all", "all_feeds", is_flag=True, help="Every enabled feed of the feeds folder.")
@click.option("--dry-run", is_flag=True,
              help="Run the whole pipeline and write the reports, but send nothing and leave the "
                   "ledger and the source files untouched.")
@click.option("--business-date", "business_dates", multiple=True, type=click.DateTime(["%Y-%m-%d"]),
              metavar="YYYY-MM-DD",
              help="Business date(s) to look for; default: today in the feed's timezone and "
                   "source.lookback_days before it.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@click.pass_context
def run(ctx: click.Context, feed_names: tuple[str, ...], all_feeds: bool, dry_run: bool,
        business_dates: tuple[Any, ...], as_json: bool) -> None:
    """Run a feed: fetch, transform, dedup, submit, report."""
    from pipeline.run_commands import run_command

    code = run_command(settings_of(ctx), feed_names, all_feeds=all_feeds, dry_run=dry_run,
                       business_dates=[d.date() for d in business_dates], as_json=as_json)
    ctx.exit(code)


@cli.command()
@click.argument("run_id", required=False)
@click.option("--feed", "feed_name", metavar="NAME", help="The feed (default: the feed of RUN_ID).")
@click.option("--failed", is_flag=True, help="Every failed transaction of the feed.")
@click.option("--file", "file_name", metavar="NAME", help="Only transactions from this source file.")
@click.option("--store", "store_id", metavar="STORE", help="Only transactions of this store.")
@click.option("--business-date", type=click.DateTime(["%Y-%m-%d"]), metavar="YYYY-MM-DD",
              help="Only transactions of this business date.")
@click.option("--include-permanent", is_flag=True,
              help="Resend failed-permanent transactions too (default: failed-retryable only).")
@click.option("--dry-run", is_flag=True, help="Show what would be resent; send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@click.pass_context
def rerun(ctx: click.Context, run_id: str | None, feed_name: str | None, failed: bool, file_name: str | None,
          store_id: str | None, business_date: Any, include_permanent: bool, dry_run: bool,
          as_json: bool) -> None:
    """Resend failed transactions of a run, file, store or business day."""
    from pipeline.run_commands import rerun_command

    ctx.exit(rerun_command(
        settings_of(ctx), run_id, feed_name=feed_name, failed=failed, file=file_name, store_id=store_id,
        business_date=business_date.date() if business_date else None,
        include_permanent=include_permanent, dry_run=dry_run, as_json=as_json,
    ))


@cli.command()
@click.option("--feed", metavar="NAME", help="Only runs of this feed.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many runs.")
@click.option("--missing", is_flag=True,
              help="List expected files (feed [expected]) that are missing or came late instead.")
@click.option("--business-date", "business_dates", multiple=True, type=click.DateTime(["%Y-%m-%d"]),
              metavar="YYYY-MM-DD", help="With --missing: the business date(s) to check "
              "(default: today in each feed's timezone and source.lookback_days before it).")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
@click.pass_context
def runs(ctx: click.Context, feed: str | None, limit: int | None, missing: bool,
         business_dates: tuple[Any, ...], as_json: bool) -> None:
    """Show run history with counts and status."""
    from pipeline.run_commands import missing_command, runs_command

    if missing:
        ctx.exit(missing_command(settings_of(ctx), feed=feed,
                                 business_dates=[d.date() for d in business_dates], as_json=as_json))
    ctx.exit(runs_command(settings_of(ctx), feed=feed, limit=limit, as_json=as_json))


@cli.command()
@click.option("--feed", metavar="NAME", help="Only problems of this feed.")
@click.option("--all", "include_resolved", is_flag=True, help="Resolved problems too (newest last).")
@click.option("--resolve", type=int, metavar="ID",
              help="Acknowledge open problem ID: closed now (its \"resolved\" alert is sent); if its cause "
                   "is still there the next run opens it again (conflicts: only newer ones).")
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
@click.pass_context
def problems(ctx: click.Context, feed: str | None, include_resolved: bool, resolve: int | None,
             as_json: bool) -> None:
    """List open problems: unreadable files, missing files, platform, credentials, backlog, rejects."""
    from pipeline.problem_commands import problems_command

    ctx.exit(problems_command(settings_of(ctx), feed=feed, include_resolved=include_resolved,
                              resolve=resolve, as_json=as_json))


@cli.command()
@click.argument("file_name", metavar="FILE")
@click.option("--feed", "feed_name", metavar="NAME", help="The feed whose quarantine holds FILE.")
@click.option("--json", "as_json", is_flag=True, help="Print what was released as JSON.")
@click.pass_context
def release(ctx: click.Context, file_name: str, feed_name: str | None, as_json: bool) -> None:
    """Take an unreadable file out of quarantine; the next run reads it again."""
    from pipeline.problem_commands import release_command

    ctx.exit(release_command(settings_of(ctx), file_name, feed_name=feed_name, as_json=as_json))


@cli.command()
@click.argument("run_id", required=False)
@click.option("--feed", metavar="NAME", help="With --business-date: the feed of the business day.")
@click.option("--business-date", type=click.DateTime(["%Y-%m-%d"]), metavar="YYYY-MM-DD",
              help="Report one business day of --feed (current states, reruns included).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write the report files here (default: REPORTS_DIR/<feed>/<run_id or day-DATE>/).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def report(ctx: click.Context, run_id: str | None, feed: str | None, business_date: Any, out: Path | None,
           as_json: bool) -> None:
    """Regenerate the reports of a run or a business day."""
    from pipeline.run_commands import report_command

    ctx.exit(report_command(settings_of(ctx), run_id, feed=feed,
                            business_date=business_date.date() if business_date else None,
                            out=out, as_json=as_json))


@cli.command()
@click.option("--feed", "feed_names", multiple=True, metavar="NAME",
              help="Schedule only this feed (name in the feeds folder, or a path); repeatable. "
                   "Default: every enabled feed with a schedule.")
@click.option("--once-catchup", is_flag=True,
              help="Run the runs missed while no scheduler was running (once per feed, within the "
                   "grace time), then exit with the worst of their exit codes.")
@click.option("--misfire-grace", default="12h", show_default=True, metavar="DURATION",
              help="How late a missed run may still start (e.g. 900, 30m, 12h, 2d).")
@click.pass_context
def schedule(ctx: click.Context, feed_names: tuple[str, ...], once_catchup: bool,
             misfire_grace: str) -> None:
    """Run the scheduler daemon: one job per enabled feed.

    Each feed runs on its `schedule` (cron, in the feed's timezone); runs of one feed, or of
    feeds sharing a dedup scope, never overlap. Runs missed while the daemon was down catch up once
    at start. SIGTERM/SIGINT finish the current batch, then exit 0.
    """
    from pipeline.logs import setup_logging
    from pipeline.scheduling import parse_duration, schedule_command

    try:
        grace = parse_duration(misfire_grace)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--misfire-grace") from exc
    if ctx.obj["verbose"] < 1:  # a daemon's log is its output: one line per run at least
        setup_logging(ctx.obj["log_format"], 1)
    ctx.exit(schedule_command(settings_of(ctx), feed_names, once_catchup=once_catchup,
                              misfire_grace_seconds=grace))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port to listen on (0: any free port).")
@click.option("--region", default="demo", show_default=True,
              help="Antavo region: the credential scope is <region>/api/antavo_request.")
@click.option("--api-key", default="sandbox-key", show_default=True, envvar="POSFEED_SANDBOX_API_KEY",
              help="The API key the emulated Antavo accepts [env POSFEED_SANDBOX_API_KEY].")
@click.option("--api-secret", default="sandbox-secret", envvar="POSFEED_SANDBOX_API_SECRET",
              help="Its secret [env POSFEED_SANDBOX_API_SECRET; default sandbox-secret].")
@click.option("--requests-per-minute", type=click.IntRange(min=1), default=None,
              help="Rate limit per platform (sliding minute); 429 with Retry-After beyond it.")
@click.option("--retry-after", type=click.FloatRange(min=0), default=None,
              help="Retry-After seconds on 429 [default: until the window frees a slot].")
@click.option("--fault-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of requests that fail on purpose: 500/503, dropped connection, slow "
                   "answer, or processed with the answer lost.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fault dice.")
@click.option("--latency-ms", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Added latency per request.")
@click.option("--clock-skew", type=click.FloatRange(min=0), default=300.0, show_default=True,
              help="Accepted difference between the signed Date and the server clock, seconds.")
@click.option("--unknown-customer-prefix", default="unknown-", show_default=True,
              help="Customer ids starting with this are unknown (404 160212); '' to know everyone.")
@click.option("--state", "state_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Keep accepted transactions in this JSON file across restarts.")
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=4 * 1024 * 1024, show_default=True,
              help="Larger request bodies are refused with 413.")
@click.option("--crmcom-username", default="posfeed", show_default=True,
              envvar="POSFEED_SANDBOX_CRMCOM_USERNAME",
              help="The user the emulated CRM.COM accepts [env POSFEED_SANDBOX_CRMCOM_USERNAME].")
@click.option("--crmcom-password", default="sandbox-password", envvar="POSFEED_SANDBOX_CRMCOM_PASSWORD",
              help="Its password [env POSFEED_SANDBOX_CRMCOM_PASSWORD; default sandbox-password].")
@click.option("--crmcom-organisation", default="sandbox", show_default=True,
              envvar="POSFEED_SANDBOX_CRMCOM_ORGANISATION",
              help="Its organisation [env POSFEED_SANDBOX_CRMCOM_ORGANISATION].")
@click.option("--crmcom-web-api-key", default="sandbox-web-api-key",
              envvar="POSFEED_SANDBOX_CRMCOM_WEB_API_KEY",
              help="The Web API key it accepts [env POSFEED_SANDBOX_CRMCOM_WEB_API_KEY; "
                   "default sandbox-web-api-key].")
@click.option("--token-ttl", type=click.FloatRange(min=0), default=7200.0, show_default=True,
              help="Lifetime of a CRM.COM token in seconds (short values exercise renewal).")
def sandbox(host: str, port: int, region: str, api_key: str, api_secret: str,
            requests_per_minute: int | None, retry_after: float | None, fault_rate: float, seed: int,
            latency_ms: float, clock_skew: float, unknown_customer_prefix: str,
            state_file: Path | None, crmcom_username: str, crmcom_password: str,
            crmcom_organisation: str, crmcom_web_api_key: str, token_ttl: float,
            max_body_bytes: int) -> None:
    """Serve the emulated platforms (Antavo, CRM.COM) over HTTP for tests and demos."""
    from pipeline.sandbox import crmcom
    from pipeline.sandbox.server import serve
    from pipeline.sandbox.state import SandboxConfig, SandboxState

    config = SandboxConfig(
        region=region, api_key=api_key, api_secret=api_secret, clock_skew_seconds=clock_skew,
        requests_per_minute=requests_per_minute, retry_after_seconds=retry_after,
        fault_rate=fault_rate, seed=seed, latency_ms=latency_ms,
        unknown_customer_prefix=unknown_customer_prefix or None, state_file=state_file,
        max_body_bytes=max_body_bytes,
    )
    shown_secret = api_secret if api_secret == "sandbox-secret" else "(as given)"
    click.echo(f"posfeed sandbox on http://{host}:{port}  region={region}  api key={api_key}  "
               f"api secret={shown_secret}", err=True)
    click.echo(f"CRM.COM at http://{host}:{port}{crmcom.PREFIX}  username={crmcom_username}  "
               f"organisation={crmcom_organisation}  token ttl={token_ttl:g}s", err=True)
    click.echo(f"inspect: http://{host}:{port}/_sandbox/stats  /_sandbox/transactions", err=True)
    state = SandboxState(config)
    crmcom.configure(state, crmcom.CrmcomConfig(
        username=crmcom_username, password=crmcom_password, organisation=crmcom_organisation,
        web_api_key=crmcom_web_api_key, token_ttl_seconds=token_ttl,
    ))
    serve(state, host=host, port=port)


@cli.command()
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Put the demo's state and reports in this folder (default: a new temporary folder).")
@click.option("--json", "as_json", is_flag=True, help="Print the summaries as JSON.")
@click.pass_context
def demo(ctx: click.Context, keep: Path | None, as_json: bool) -> None:
    """Run the sample feeds against a local sandbox, with a temporary state dir."""
    from pipeline.run_commands import demo_command

    ctx.exit(demo_command(keep=keep, as_json=as_json))


@cli.group()
def bench() -> None:
    """Benchmarks, each side by side with its baseline in the same run."""


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
    import signal

    from pipeline.benchmarks.e2e import FULL_LINE_ITEMS, FULL_SCALING, render_text, run_suite
    from pipeline.benchmarks.e2e import update_docs as write_docs
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
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def bench_ledger(prefill: int, line_items: int, rounds: int, update_docs: Path | None, as_json: bool) -> None:
    """Does a bigger ledger cost time? One day against an empty and a filled ledger, alternating."""
    from pipeline.benchmarks.e2e import render_ledger_growth, run_ledger_growth, update_ledger_growth_docs

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
    from pipeline.benchmarks.e2e import FULL_LINE_ITEMS

    ctx.invoke(bench_e2e, line_items=FULL_LINE_ITEMS, scaling=None, full=True, latency_ms=5.0,
               as_json=as_json, out=out, profile=False, update_docs=update_docs)
