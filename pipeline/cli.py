"""The `posfeed` command line: parse arguments, call one library function, print.

Logs go to stderr, results to stdout (`--json` for machines). Errors from the library are mapped
to exit codes in one place, :func:`main`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from pipeline.config import Settings
from pipeline.errors import EXIT_INTERNAL, ConfigError, PosfeedError, state_io_error
from pipeline.logs import counted, set_told_options, shown

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
@click.option("--ledger-url", envvar="POSFEED_LEDGER_URL", metavar="URL",
              help="A PostgreSQL ledger shared by several hosts, postgresql://user@host/db "
                   "[env POSFEED_LEDGER_URL; default: ledger.sqlite in the state folder].")
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
    ledger_url: str | None,
    log_format: str,
    verbose: int,
) -> None:
    """posfeed: POS transaction exports to loyalty platforms, exactly once, with reconciliation."""
    ctx.ensure_object(dict)
    from pipeline.config import register_env_secrets_of_feeds
    from pipeline.logs import setup_logging

    setup_logging(log_format, verbose)
    ctx.obj["settings"] = Settings.from_env(
        state_dir=state_dir, feeds_dir=feeds_dir, reports_dir=reports_dir, ledger_url=ledger_url
    )
    set_told_options(_given_options(ctx, ctx.obj["settings"]))
    ctx.call_on_close(lambda: set_told_options(()))  # one command line's (CliRunner runs many)
    ctx.obj["log_format"] = log_format
    ctx.obj["verbose"] = verbose
    register_env_secrets_of_feeds(ctx.obj["settings"].feeds_dir)


def _given_options(ctx: click.Context, settings: Settings) -> list[str]:
    """The global options given on the command line (not from the environment), as the commands
    posfeed tells a user to run repeat them: folders absolute (the command may be run elsewhere),
    the ledger URL without its password (never printed or stored; fill it in, or give it through
    POSFEED_LEDGER_URL or a .pgpass file)."""
    from click.core import ParameterSource

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE

    options: list[str] = []
    for name, folder in (("state_dir", settings.state_dir), ("feeds_dir", settings.feeds_dir),
                         ("reports_dir", settings.reports_dir)):
        if given(name):
            options += [f"--{name.replace('_', '-')}", str(folder.absolute())]
    if given("ledger_url") and settings.ledger_url:
        from pipeline.ledger.location import masked_url

        options += ["--ledger-url", masked_url(settings.ledger_url)]
    return options


def main() -> None:
    """Entry point: run the CLI and map posfeed errors to exit codes."""
    try:
        # without standalone mode click returns ctx.exit(code)'s code instead of exiting
        code = cli.main(standalone_mode=False)
    except PosfeedError as exc:
        _fatal(f"posfeed: error: {shown(exc)}", exc.exit_code, exc)
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
    except OSError as exc:  # posfeed's own files: every remote edge translates its errors
        error = state_io_error(exc)
        _fatal(f"posfeed: error: {error}", error.exit_code, error)
        sys.exit(error.exit_code)
    except Exception as exc:
        _fatal(f"posfeed: internal error (a bug; please report it): {type(exc).__name__}: {shown(exc)}",
               EXIT_INTERNAL, exc)
        sys.exit(EXIT_INTERNAL)
    sys.exit(code if isinstance(code, int) else 0)


def _fatal(message: str, exit_code: int, exc: BaseException) -> None:
    """The error that ends the process: a JSON line with ``--log-format json``, else plain text;
    masked either way (an error may quote what a platform, a server or a file echoed)."""
    from pipeline.logs import json_logging_active, redact

    if json_logging_active():
        import logging

        logging.getLogger("posfeed").critical(redact(message), extra={
            "event": "fatal", "exit_code": exit_code, "error": type(exc).__name__})
        return
    click.echo(redact(message), err=True)


def _not_blank(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """An option that names something (a region, a key): blank is a usage error, not a sandbox no
    request can match."""
    if not value.strip():
        raise click.BadParameter("must not be blank")
    return value


# ---- commands ---------------------------------------------------------------------------------
# Each command below parses its options, calls one library function and prints the result.


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the feeds as JSON.")
@click.pass_context
def feeds(ctx: click.Context, as_json: bool) -> None:
    """List every feed, validate it, show its next run time and the environment variables it reads
    that are not set.

    A bad feed file exits 78, naming the file, the key path and the problem; so does a variable an
    enabled feed reads that is not set (never showing a value).
    """
    import logging

    from pipeline.check_commands import feeds_exit_code, format_feeds_table, load_feed_rows, missing_env
    from pipeline.logs import say

    rows = load_feed_rows(settings_of(ctx).feeds_dir)
    if as_json:
        print_json(rows)
    else:
        click.echo(format_feeds_table(rows))
    for row in rows:
        if not row["ok"]:
            error = row["error"]
            say(f"posfeed: error: {error['file']}: {error['key'] or '(file)'}: {error['problem']}",
                event="feed_invalid", level=logging.ERROR, file=error["file"], key=error["key"])
    for (variable, key), names in missing_env(rows).items():
        say(f"posfeed: error: environment variable {variable} is not set ({key} of {', '.join(names)})",
            event="feed_env_missing", level=logging.ERROR, variable=variable, key=key, feeds=names)
    ctx.exit(feeds_exit_code(rows))


@cli.command()
@click.argument("files", nargs=-1, type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--feed", "feed_name", metavar="NAME",
              help="Read the files as this feed does (name in the feeds folder, or a path); "
                   "default: the canonical layout, format from each file's suffix.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary (or --codes) as JSON.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Write checkouts, checkout items, rejects.csv and summary.json here.")
@click.option("--codes", is_flag=True, help="Print the reject code catalog and exit.")
@click.pass_context
def check(ctx: click.Context, files: tuple[Path, ...], feed_name: str | None, as_json: bool,
          out_dir: Path | None, codes: bool) -> None:
    """Parse, validate, normalize and dedup one or more local files, with no network.

    Exit 0 when every row is valid, 65 when rows were rejected, conflicts found or a file could
    not be read, 2 when a FILE does not exist, 78 for a configuration error.
    """
    from pipeline.check_commands import (
        check_exit_code,
        check_files,
        codes_text,
        format_check_summary,
        write_check_outputs,
    )
    from pipeline.core.rejects import catalog_rows
    from pipeline.logs import say

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
    code = check_exit_code(result)
    if code:  # the cause on stderr, whatever the output format
        s = result.summary
        causes = [f"{counted(s['rows_rejected'], 'row')} rejected"] if s["rows_rejected"] else []
        causes += [counted(s["conflicts"], "conflict")] if s["conflicts"] else []
        causes += [f"unreadable file {e.file}: {e.reason}" for e in result.unreadable]
        say(f"posfeed: check: exit {code}: {'; '.join(causes)}", event="exit", exit_code=code)
    ctx.exit(code)


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
    """List what is wrong with the feeds now, and what to do about each; acknowledge one.

    One row per open problem (--all: resolved ones too), failures first, then what to do. Kinds:
    unreadable_file, missing_file, platform_unreachable, credentials_refused, run_failed, backlog,
    reject_share, conflicts. --resolve ID acknowledges a problem by hand (a conflicts problem after
    review): it is closed and its "resolved" alert sent.
    """
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
@click.option("--region", default="demo", show_default=True, callback=_not_blank,
              help="Antavo region: the credential scope is <region>/api/antavo_request.")
@click.option("--api-key", default="sandbox-key", show_default=True, envvar="POSFEED_SANDBOX_API_KEY",
              callback=_not_blank,
              help="The API key the emulated Antavo accepts [env POSFEED_SANDBOX_API_KEY].")
@click.option("--api-secret", default="sandbox-secret", envvar="POSFEED_SANDBOX_API_SECRET",
              callback=_not_blank,
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
              help="Keep accepted transactions in this file (SQLite, written at each change) "
                   "across restarts.")
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
@click.pass_context
def sandbox(ctx: click.Context, host: str, port: int, region: str, api_key: str, api_secret: str,
            requests_per_minute: int | None, retry_after: float | None, fault_rate: float, seed: int,
            latency_ms: float, clock_skew: float, unknown_customer_prefix: str,
            state_file: Path | None, crmcom_username: str, crmcom_password: str,
            crmcom_organisation: str, crmcom_web_api_key: str, token_ttl: float,
            max_body_bytes: int) -> None:
    """Serve the emulated platforms (Antavo, CRM.COM) over HTTP for tests and demos."""
    from pipeline.sandbox import crmcom
    from pipeline.sandbox.server import serve
    from pipeline.sandbox.state import SandboxConfig, SandboxState
    from pipeline.sandbox.store import StateFileError

    config = SandboxConfig(
        region=region, api_key=api_key, api_secret=api_secret, clock_skew_seconds=clock_skew,
        requests_per_minute=requests_per_minute, retry_after_seconds=retry_after,
        fault_rate=fault_rate, seed=seed, latency_ms=latency_ms,
        unknown_customer_prefix=unknown_customer_prefix or None, state_file=state_file,
        max_body_bytes=max_body_bytes,
    )
    shown_secret = api_secret if api_secret == "sandbox-secret" else "(as given)"

    def announce(url: str) -> None:  # once bound: the real port, also with --port 0
        click.echo(f"posfeed sandbox on {url}  region={region}  api key={api_key}  "
                   f"api secret={shown_secret}", err=True)
        click.echo(f"CRM.COM at {url}{crmcom.PREFIX}  username={crmcom_username}  "
                   f"organisation={crmcom_organisation}  token ttl={token_ttl:g}s", err=True)
        click.echo(f"inspect: {url}/_sandbox/stats  /_sandbox/transactions", err=True)

    try:
        state = SandboxState(config)
    except StateFileError as exc:  # a file given on the command line: a configuration error
        raise ConfigError(str(exc)) from exc
    crmcom.configure(state, crmcom.CrmcomConfig(
        username=crmcom_username, password=crmcom_password, organisation=crmcom_organisation,
        web_api_key=crmcom_web_api_key, token_ttl_seconds=token_ttl,
    ))
    try:
        serve(state, host=host, port=port, announce=announce)
    except OSError as exc:  # as posfeed's errors say it; exit 1 (docs/OPERATIONS.md's exit codes)
        _fatal(f"posfeed: error: cannot listen on {host}:{port}: {exc.strerror or exc}", 1, exc)
        ctx.exit(1)
    finally:
        state.close()


@cli.command()
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Put the demo's state and reports in this folder (default: a new temporary folder).")
@click.option("--json", "as_json", is_flag=True, help="Print the summaries as JSON.")
@click.pass_context
def demo(ctx: click.Context, keep: Path | None, as_json: bool) -> None:
    """Run the sample feeds against a local sandbox, with a temporary state dir."""
    from pipeline.run_commands import demo_command

    ctx.exit(demo_command(keep=keep, as_json=as_json))


# the bench group lives in its own module (registered here, once `cli` exists)
from pipeline.cli_bench import bench  # noqa: E402

cli.add_command(bench)
