"""Sinks: where checkouts go. :func:`make_sink` builds the feed's target platform;
:func:`decide_before_sending` is what its plan settles without sending (a dry run takes it)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from pipeline.config import AntavoTarget, CrmcomTarget, Feed, resolve_secret
from pipeline.errors import ConfigError
from pipeline.sinks.base import ORIGINAL_NOT_FOUND, CheckoutRow, EventResult, Outcome, Sink
from pipeline.sinks.delivery import DeliveryPolicy, Plan, PlatformAdapter, PlatformSink
from pipeline.sinks.http import HttpClient

__all__ = [
    "EventResult", "Outcome", "PlatformSink", "Sink", "antavo_credentials", "decide_before_sending",
    "make_antavo_sink", "make_sink",
]


def antavo_credentials(feed: Feed) -> tuple[str, str | None]:
    """The API key and (with signed auth) secret of the feed's Antavo target, from the environment
    or the files it names; raises SecretError when one is missing."""
    target = feed.target
    if not isinstance(target, AntavoTarget):
        raise ConfigError("not an Antavo target", key="target.kind")
    api_key = resolve_secret(env=target.api_key_env, what="target.api_key_env")
    secret: str | None = None
    if target.auth == "signed":
        secret_file = feed.resolve_path(target.api_secret_file) if target.api_secret_file else None
        secret = resolve_secret(env=target.api_secret_env, file=secret_file, what="target.api_secret")
    return api_key, secret


def make_antavo_sink(
    feed: Feed,
    *,
    client: HttpClient | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    rng: random.Random | None = None,
) -> PlatformSink:
    """The Antavo sink of a feed, secrets read from the environment or files it names."""
    from pipeline.sinks.antavo import AntavoAdapter

    target = feed.target
    api_key, secret = antavo_credentials(feed)
    assert isinstance(target, AntavoTarget)
    adapter = AntavoAdapter(target, feed_name=feed.name, api_key=api_key, api_secret=secret, clock=clock)
    return PlatformSink(adapter, DeliveryPolicy.from_target(target), client=client, rng=rng,
                        mask_customers=feed.logging.hash_customer_ids)


def make_sink(feed: Feed, **options: object) -> Sink:
    """The sink of the feed's ``[target]``; raises ConfigError (or SecretError) when it cannot.

    ``originals`` (a callable: transaction id -> :class:`pipeline.sinks.crmcom.OriginalPurchase`
    or None) lets a target that cancels purchases find a returned sale's platform event; targets
    that don't need it ignore it.
    """
    kind = feed.target.kind
    if kind == "crmcom":
        from pipeline.sinks.crmcom import make_crmcom_sink

        return make_crmcom_sink(feed, **options)  # type: ignore[arg-type]
    options.pop("originals", None)
    if kind == "antavo":
        return make_antavo_sink(feed, **options)  # type: ignore[arg-type]
    raise ConfigError(f"no sink for target kind {kind!r}", key="target.kind")


def decide_before_sending(feed: Feed, checkouts: Sequence[CheckoutRow]) -> list[EventResult]:
    """The outcomes the feed's target settles without sending (unmatched return, guest not
    sendable, partial return on CRM.COM, ...): the ``unsent`` results of the target adapter's own
    ``plan``, the function its sink plans every submission with. Planning never signs, sends or
    reads a secret, so the adapter is built without credentials. A dry run takes exactly these
    decisions; results that wait for the platform (RETRYABLE, e.g. a returned sale not delivered
    yet) are left out, as a real run may settle them otherwise, but for a return waiting for a
    sale that has not arrived (``original_not_found``): on Antavo a real run first asks the
    platform (or reads back a return in doubt), which a dry run cannot; it shows the return
    waiting, as the platform not listing the sale would
    (:meth:`~pipeline.sinks.antavo.AntavoAdapter.waiting_unread`). A sale that may have landed
    and that a void names, which a real run looks up and never sends, shows as that lookup not
    finding it would leave it (``voided_in_doubt``; the run then post-voids it): never sent.
    """
    target = feed.target
    planner: PlatformAdapter
    if isinstance(target, CrmcomTarget):
        from pipeline.sinks.crmcom import Credentials, CrmcomAdapter

        planner = CrmcomAdapter(target, Credentials())
    elif isinstance(target, AntavoTarget):
        from pipeline.sinks.antavo import AntavoAdapter

        planner = AntavoAdapter(target, feed_name=feed.name, api_key="", api_secret="")
    else:
        raise ConfigError(f"no sink for target kind {target.kind!r}", key="target.kind")
    plan: Plan = planner.plan(checkouts)
    decided = [result for result in plan.unsent
               if result.outcome is not Outcome.RETRYABLE or result.error_code == ORIGINAL_NOT_FOUND]
    waiting = getattr(planner, "waiting_unread", None)
    voided = getattr(planner, "voided_unread", None)
    return decided + (waiting() if waiting is not None else []) + (voided() if voided is not None else [])
