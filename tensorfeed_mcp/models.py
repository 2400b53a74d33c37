"""Pydantic models: upstream payloads (tolerant of extra fields) and tool results (the output schemas)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

MAX_UPSTREAM_TEXT = 200
# C0/C1 controls and the Unicode bidi overrides and isolates, which can make text read differently than it is.
_UNSAFE_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def clean_upstream_text(text: str, limit: int = MAX_UPSTREAM_TEXT) -> str:
    """Strip control and bidi-override characters and cap the length of text that came from upstream."""
    cleaned = _UNSAFE_CHARS.sub("", text)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


UpstreamText = Annotated[str, AfterValidator(clean_upstream_text)]


# ---- Upstream payloads -------------------------------------------------------------------------


class UpstreamModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


class BalancePayload(UpstreamModel):
    balance: int
    total_purchased: int = 0
    created: datetime | None = None
    last_used: datetime | None = None


class UsageEntry(UpstreamModel):
    endpoint: UpstreamText
    credits: int
    at: datetime


class EndpointAggregate(UpstreamModel):
    calls: int
    credits: int
    last_seen: datetime | None = None


class UsagePayload(UpstreamModel):
    token_balance: int | None = None
    total_calls: int
    total_credits_spent: int
    by_endpoint: dict[UpstreamText, EndpointAggregate] = Field(default_factory=dict)
    recent: list[UsageEntry] = Field(default_factory=list)


class PurchasePayload(UpstreamModel):
    tx_hash: UpstreamText
    amount_usd: float
    credits_added: int
    block_number: int | None = None
    confirmed_at: datetime | None = None


class HistoryPayload(UpstreamModel):
    current_balance: int | None = None
    total_purchased_usd: float = 0.0
    total_credits_added: int = 0
    purchase_count: int = 0
    purchases: list[PurchasePayload] = Field(default_factory=list)


class SpendCapPayload(UpstreamModel):
    daily_cap: int | None = None
    daily_spent: int = 0
    remaining: int | None = None
    reset_at: datetime
    balance: int | None = None


# ---- Tool results ------------------------------------------------------------------------------


class AccountResult(BaseModel):
    """Fields every account result carries."""

    as_of: datetime = Field(description="When TensorFeed produced this data (its own clock, UTC).")
    age_seconds: float = Field(description="How old the data was when returned (0 unless served from the cache).")
    token: str = Field(description="The token this describes, masked (first 12 and last 4 characters).")


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
    recent: list[UsageCall] = Field(description="The newest calls, newest first (the service returns at most 25).")
    window_start: datetime | None = Field(description="Time of the oldest call listed in recent.")
    window_end: datetime | None = Field(description="Time of the newest call.")
    buffer_full: bool = Field(
        description="True at 100 calls: older calls have rolled off upstream and are not counted."
    )
    endpoint_filter: str | None = Field(description="The endpoint text the results were filtered to, if any.")


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


class SpendCap(AccountResult):
    """The daily credit ceiling TensorFeed itself enforces; the day is the UTC calendar day."""

    daily_cap: int | None = Field(description="Credits allowed per UTC day; null when no cap is set.")
    daily_spent: int = Field(description="Credits spent today (UTC). The service reports 0 when no cap is set.")
    remaining: int | None = Field(description="Credits left under the cap today; null when no cap is set.")
    reset_at: datetime = Field(description="When today's spend resets (next UTC midnight).")
    balance: int | None


class SpendCapChange(SpendCap):
    previous_cap: int | None = Field(description="The cap before this change; null when none was set.")


AlertKind = Literal["balance_below", "daily_spend_above", "daily_cap_used_pct_above", "runway_below_hours"]
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


class AlertCheck(AccountResult):
    alerts: list[AlertVerdict]
    triggered: int = Field(description="How many rules are triggered.")
    balance: int | None
    daily_spent: int | None = Field(description="Credits spent today (UTC).")
    daily_spent_source: Literal["service", "usage_buffer"]
    daily_spent_complete: bool = Field(
        description="False when daily_spent comes from the usage buffer and older calls from today may be "
        "missing from it: then it is a lower bound."
    )
    burn_rate_credits_per_hour: float
    burn_rate_lookback_hours: float = Field(description="The span of recent usage the burn rate was measured over.")
    runway_hours: float | None = Field(description="balance / burn rate; null when nothing is being spent.")


class AlertRuleSaved(BaseModel):
    rule: AlertRule
    action: Literal["created", "updated"]
    rules: list[AlertRule] = Field(description="Every rule now in force for this token.")


class AlertRuleDeleted(BaseModel):
    deleted: str
    rules: list[AlertRule] = Field(description="Every rule still in force for this token.")
