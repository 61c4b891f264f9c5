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


def main() -> None:
    """Entry point: run the CLI and map posfeed errors to exit codes."""
    try:
        cli.main(standalone_mode=False)
    except PosfeedError as exc:
        click.echo(f"posfeed: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("posfeed: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        click.echo(f"posfeed: internal error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(EXIT_INTERNAL)


# ---- commands ---------------------------------------------------------------------------------
# Each command below parses its options, calls one library function and prints the result.


@cli.command()
@click.pass_context
def feeds(ctx: click.Context) -> None:
    """List every feed, validate it and show its next run time."""
    raise click.ClickException("not implemented yet")


@cli.command()
@click.pass_context
def check(ctx: click.Context) -> None:
    """Parse, validate, normalize and dedup one local file, with no network."""
    raise click.ClickException("not implemented yet")


@cli.command()
@click.pass_context
def run(ctx: click.Context) -> None:
    """Run a feed: fetch, transform, dedup, submit, report."""
    raise click.ClickException("not implemented yet")


@cli.command()
@click.pass_context
def rerun(ctx: click.Context) -> None:
    """Resend failed transactions of a run, file, store or business day."""
    raise click.ClickException("not implemented yet")


@cli.command()
@click.pass_context
def runs(ctx: click.Context) -> None:
    """Show run history with counts and status."""
    raise click.ClickException("not implemented yet")


@cli.command()
@click.pass_context
def report(ctx: click.Context) -> None:
    """Regenerate the reports of a run or a business day."""
    raise click.ClickException("not implemented yet")


@cli.command()
@click.pass_context
def schedule(ctx: click.Context) -> None:
    """Run the scheduler daemon: one job per enabled feed."""
    raise click.ClickException("not implemented yet")


@cli.command()
@click.pass_context
def sandbox(ctx: click.Context) -> None:
    """Serve the emulated platforms (Antavo, CRM.COM) over HTTP for tests and demos."""
    raise click.ClickException("not implemented yet")


@cli.command()
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Run the sample feeds against a local sandbox, with a temporary state dir."""
    raise click.ClickException("not implemented yet")


@cli.group()
def bench() -> None:
    """Benchmarks, each side by side with its baseline in the same run."""
