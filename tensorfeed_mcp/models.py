"""Pydantic models: upstream payloads (strict about the fields we use, extra fields ignored) and tool results."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from tensorfeed_mcp.limits import (
    MAX_QUEUED_MESSAGES,
    MAX_UPSTREAM_ENDPOINTS,
    MAX_UPSTREAM_PURCHASES,
    MAX_UPSTREAM_TEXT,
    SERVICE_CALL_MEMORY,
)

# Controls, format characters (bidi overrides, zero-width, tags) and line/paragraph separators: characters that
# can make text read differently than it is, or carry hidden instructions.
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def is_unsafe_char(char: str) -> bool:
    return unicodedata.category(char) in UNSAFE_CATEGORIES


def clean_upstream_text(text: str, limit: int = MAX_UPSTREAM_TEXT) -> str:
    """Strip control, format and separator characters and cap the length of text that came from upstream."""
    cleaned = "".join(char for char in text[: limit * 4] if not is_unsafe_char(char))
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def _require_time(value: object) -> object:
    if not isinstance(value, str | datetime):
        raise ValueError("a timestamp must be an ISO-8601 string")
    return value


UpstreamText = Annotated[str, AfterValidator(clean_upstream_text)]
# A timestamp without a zone is refused rather than guessed: the contract promises UTC with a Z.
UpstreamTime = Annotated[AwareDatetime, BeforeValidator(_require_time)]
MAX_CREDITS = 10**12
"""More credits than anyone holds (20 billion dollars' worth at the base rate): a figure beyond it is refused, so
sums of figures stay far within what a JavaScript client holds exactly (2**53)."""
# A count or an amount of credits the service reports: never negative, never absurd.
Count = Annotated[int, Field(strict=True, ge=0, le=MAX_CREDITS)]
Money = Annotated[float, Field(strict=True, allow_inf_nan=False)]


# ---- Upstream payloads -------------------------------------------------------------------------


class UpstreamModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _cut_lists(data: Any, limits: dict[str, int]) -> Any:
    """Cut over-long lists (or objects) in a raw payload and say what was cut in `cut`, so no hostile answer
    can grow a tool result without bound."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    notes = []
    for name, limit in limits.items():
        value = data.get(name)
        if isinstance(value, list | dict) and len(value) > limit:
            notes.append(f"{name}: {len(value):,} sent, first {limit:,} kept")
            data[name] = value[:limit] if isinstance(value, list) else dict(list(value.items())[:limit])
    data["cut"] = "; ".join(notes) or None
    return data


class BalancePayload(UpstreamModel):
    balance: Count
    total_purchased: Count = 0
    created: UpstreamTime | None = None
    last_used: UpstreamTime | None = None


class UsageEntry(UpstreamModel):
    endpoint: UpstreamText
    credits: Count
    at: UpstreamTime


class EndpointAggregate(UpstreamModel):
    calls: Count
    credits: Count
    last_seen: UpstreamTime | None = None


class UsagePayload(UpstreamModel):
    token_balance: Count | None = None
    total_calls: Count
    total_credits_spent: Count
    by_endpoint: dict[UpstreamText, EndpointAggregate] = Field(default_factory=dict)
    recent: list[UsageEntry] = Field(default_factory=list)
    cut: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _bound(cls, data: Any) -> Any:
        return _cut_lists(data, {"by_endpoint": MAX_UPSTREAM_ENDPOINTS, "recent": SERVICE_CALL_MEMORY})


class PurchasePayload(UpstreamModel):
    tx_hash: UpstreamText
    amount_usd: Money
    credits_added: Count
    block_number: Count | None = None
    confirmed_at: UpstreamTime | None = None


class HistoryPayload(UpstreamModel):
    current_balance: Count | None = None
    total_purchased_usd: Money = 0.0
    total_credits_added: Count = 0
    purchase_count: Count = 0
    purchases: list[PurchasePayload] = Field(default_factory=list)
    cut: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _bound(cls, data: Any) -> Any:
        return _cut_lists(data, {"purchases": MAX_UPSTREAM_PURCHASES})


class SpendCapPayload(UpstreamModel):
    daily_cap: Annotated[int, Field(strict=True, ge=1, le=1_000_000)] | None = None  # the service's own range
    daily_spent: Count = 0
    remaining: Count | None = None
    reset_at: UpstreamTime
    balance: Count | None = None


# ---- Tool results ------------------------------------------------------------------------------


class AccountResult(BaseModel):
    """Fields every account result carries."""

    as_of: datetime = Field(description="When TensorFeed produced this data (its own clock, UTC).")
    age_seconds: float = Field(description="How old the data was when returned (0 unless served from the cache).")
    token: str = Field(description="The token this describes, masked (first 12 and last 4 characters).")
    note: str | None = Field(
        default=None,
        description="Null normally; says what the figures cannot show: a ledger too new to go on (and how to start "
        "it), a snapshot that could not be taken, TensorFeed's clock or data not believed and kept out of the ledger.",
    )


class EndpointUsage(BaseModel):
    endpoint: str
    calls: int
    credits: int
    share_pct: float = Field(description="This endpoint's share of the credits in the usage window, in percent.")
    last_seen: datetime | None


class UsageCall(BaseModel):
    endpoint: str
    credits: int
    at: datetime


class AccountUsage(AccountResult):
    """Premium-call usage over the service's ring buffer of the token's last 100 calls."""

    token_balance: int | None = Field(description="Credits left, as the usage endpoint reports it.")
    total_calls: int = Field(description="Calls in the window (at most 100: the service keeps only the last 100).")
    total_credits_spent: int = Field(description="Credits spent by the calls in the window.")
    by_endpoint: list[EndpointUsage] = Field(description="Per endpoint, most credits first.")
    recent: list[UsageCall] = Field(description="The newest calls, newest first, as many as recent_limit asked for.")
    window_start: datetime | None = Field(description="Time of the oldest call the service listed (of up to 25).")
    window_end: datetime | None = Field(description="Time of the newest call.")
    buffer_full: bool = Field(
        description="True at 100 calls: older calls have rolled off upstream and are not counted."
    )
    endpoint_filter: str | None = Field(description="The endpoint text the results were filtered to, if any.")
    upstream_cut: str | None = Field(
        description="Null normally; set when TensorFeed sent more entries than its contract allows, saying which "
        "lists were cut and to how many."
    )


class UsdEstimate(BaseModel):
    amount_usd: float
    usd_per_credit: float
    note: str


class AccountBalance(AccountResult):
    balance: int = Field(description="Credits left on the token.")
    total_purchased: int = Field(description="Credits bought over the token's life.")
    spent_lifetime: int = Field(description="total_purchased minus balance.")
    created: datetime | None
    last_used: datetime | None
    usd_estimate: UsdEstimate = Field(description="The balance in US dollars at the base rate: an estimate.")


class Purchase(BaseModel):
    tx_hash: str
    amount_usd: float
    credits_added: int
    block_number: int | None
    confirmed_at: datetime | None


class PaymentHistory(AccountResult):
    purchases: list[Purchase] = Field(description="Credit purchases, newest first.")
    purchase_count: int
    total_purchased_usd: float
    total_credits_added: int
    current_balance: int | None
    upstream_cut: str | None = Field(
        description="Null normally; set when TensorFeed sent more entries than its contract allows, saying which "
        "lists were cut and to how many."
    )


class SpendCap(AccountResult):
    """The daily credit ceiling TensorFeed itself enforces; the day is the UTC calendar day."""

    daily_cap: int | None = Field(description="Credits allowed per UTC day; null when no cap is set.")
    daily_spent: int = Field(description="Credits spent today (UTC). The service reports 0 when no cap is set.")
    remaining: int | None = Field(description="Credits left under the cap today; null when no cap is set.")
    reset_at: datetime = Field(description="When today's spend resets (next UTC midnight).")
    balance: int | None


class SpendCapChange(SpendCap):
    previous_cap: int | None = Field(description="The cap before this change; null when none was set.")


AlertKind = Literal[
    "balance_below", "daily_spend_above", "daily_cap_used_pct_above", "runway_below_hours", "daily_spend_spike_pct"
]
AlertStatus = Literal["ok", "triggered", "not_applicable", "unknown"]


class AlertRule(BaseModel):
    name: str
    kind: AlertKind
    threshold: float
    unit: Literal["credits", "percent", "hours"]
    source: Literal["user", "env"] = Field(
        description="'env' rules come from TENSORFEED_ALERT_* and cannot be deleted."
    )


class AlertVerdict(BaseModel):
    name: str
    kind: AlertKind
    threshold: float
    unit: Literal["credits", "percent", "hours"]
    source: Literal["user", "env"]
    observed: float | None = Field(description="The value compared with the threshold; null when unknown.")
    status: AlertStatus
    severity: Literal["info", "warning", "critical"]
    message: str
    since: datetime | None = Field(description="When this rule went from ok to triggered; null unless triggered.")


class WebhookDelivery(BaseModel):
    at: datetime
    rule: str
    event: Literal["triggered", "resolved"]
    outcome: Literal["delivered", "failed", "will_retry"] = Field(
        description="failed: refused for good (a 4xx, a redirect), not retried; will_retry: still queued, to be "
        "tried again."
    )
    detail: str = Field(description="What the receiver answered, e.g. 'HTTP 404'.")


class Notifications(BaseModel):
    """Alert transitions posted to a webhook (TENSORFEED_ALERT_WEBHOOK_URL)."""

    configured: bool
    destination: str | None = Field(description="The webhook's scheme and host; its path, a secret, is never shown.")
    format: Literal["slack", "discord", "json"] | None
    pending: int = Field(
        description="Messages queued when this check answered. A server sends them in the background and tries "
        "again while the receiver does not take them; a check or record command sends them before it exits, "
        "within the call deadline."
    )
    dropped: int = Field(
        description=f"Messages dropped unsent, ever, because the token's queue already held {MAX_QUEUED_MESSAGES} "
        "(the oldest go first)."
    )
    last_delivery: WebhookDelivery | None = Field(
        description="How the last message this process sent for this token went (a server: since it started; "
        "a command: in this run); null when none was sent."
    )


class AlertCheck(AccountResult):
    alerts: list[AlertVerdict]
    triggered: int = Field(description="How many rules are triggered.")
    balance: int | None
    daily_spent: int | None = Field(description="Credits spent today (UTC).")
    daily_spent_source: Literal["service", "ledger", "usage_buffer"] = Field(
        description="service: the service's own figure (a cap is set); ledger: exact from local snapshots; "
        "usage_buffer: summed from the visible calls."
    )
    daily_spent_complete: bool = Field(
        description="False when daily_spent comes from the usage buffer and older calls from today may be "
        "missing from it: then it is a lower bound."
    )
    burn_rate_credits_per_hour: float = Field(
        description="The credits of the calls in the usage ring buffer over the last 24 hours, divided by the "
        "hours those calls cover: 24, or less when the visible calls reach back less far (the service lists the "
        "newest 25), never less than 1 hour."
    )
    burn_rate_lookback_hours: float = Field(description="The span of recent usage the burn rate was measured over.")
    runway_hours: float | None = Field(description="balance / burn rate; null when nothing is being spent.")
    state_error: str | None = Field(
        description="Null normally; set when the local file of saved rules could not be used: then only the "
        "environment's rules were evaluated, and this says why and what to do."
    )
    notifications: Notifications


class SpendBucket(BaseModel):
    start: datetime
    end: datetime
    endpoint: str | None = Field(description="The endpoint this bucket is about (group_by endpoint), else null.")
    credits: int = Field(description="Credits spent: exact when `exact`, else the least it can have been.")
    credits_max: int | None = Field(
        description="The most it can have been; equal to credits when exact; null when nothing bounds it (before "
        "the first snapshot, or after the last)."
    )
    exact: bool = Field(
        description="True when snapshots bracket the bucket and every snapshot interval crossing its edges had all "
        "its calls seen, so their timestamps split it."
    )
    calls_seen: int
    attributed: int = Field(description="Credits of the calls seen in the bucket.")
    unattributed: int = Field(description="credits minus attributed: spend whose calls were never seen.")
    by_endpoint: dict[str, int] = Field(
        description="Credits of the seen calls per endpoint: the three with the most, then 'other' for the rest."
    )
    purchased_credits: int = Field(description="Credits bought in the bucket (purchases are never negative spend).")


class SnapshotGap(BaseModel):
    start: datetime
    end: datetime
    hours: float


class HistoryCoverage(BaseModel):
    first_snapshot: datetime | None = Field(description="The ledger's first snapshot for this token.")
    snapshots: int = Field(description="Snapshots taken within the period.")
    gap_limit_hours: float
    gap_count: int = Field(description="Stretches in the period longer than gap_limit_hours without a snapshot.")
    gaps: list[SnapshotGap] = Field(description="The longest ten gaps, oldest first.")


class SpendTrend(BaseModel):
    trailing_days: int = Field(description="Exact full UTC days among the last seven, behind the median.")
    trailing_median_daily: float | None = Field(
        description="Median daily spend of those days; null with fewer than three."
    )
    month_to_date: int = Field(description="Credits spent this UTC month so far (the least, unless exact).")
    month_to_date_exact: bool
    projected_month_end: float | None = Field(
        description="month_to_date plus the trailing median for each day left in the month."
    )


class SpendHistory(AccountResult):
    """Spend over time from the local ledger of snapshots: exact where snapshots allow, bounded where not."""

    period_start: datetime
    period_end: datetime = Field(description="The end of the period, exclusive: just after the newest snapshot.")
    group_by: Literal["day", "hour", "endpoint"]
    buckets: list[SpendBucket] = Field(description="UTC days or hours, oldest first; or endpoints, most first.")
    totals: SpendBucket = Field(description="The whole period as one bucket.")
    coverage: HistoryCoverage
    trend: SpendTrend


class AlertRuleSaved(BaseModel):
    rule: AlertRule
    action: Literal["created", "updated"]
    rule_count: int = Field(description="Rules now in force for this token, environment rules included.")


class AlertRuleDeleted(BaseModel):
    deleted: AlertRule
    rule_count: int = Field(description="Rules still in force for this token, environment rules included.")


class AccountSummary(BaseModel):
    """The account_summary resource: the headline of balance and usage."""

    token: str
    as_of: datetime
    balance: int
    usd_estimate: UsdEstimate
    total_purchased: int
    recent_calls: int
    recent_credits_spent: int
    top_endpoints: list[EndpointUsage]
    window_start: datetime | None
