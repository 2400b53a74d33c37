"""One tenant's alert rules: those from the environment, then those the user saved."""

from __future__ import annotations

from tensorfeed_mcp.core.alerts import make_rule
from tensorfeed_mcp.errors import InvalidInputError, shown
from tensorfeed_mcp.models import AlertRule, AlertRuleDeleted, AlertRuleSaved
from tensorfeed_mcp.settings.identity import Tenant
from tensorfeed_mcp.store import Store


class RuleBook:
    """Saves and deletes a tenant's rules in the store; the environment's rules are read-only here."""

    def __init__(self, tenant: Tenant, env_rules: list[AlertRule], store: Store) -> None:
        self._tenant = tenant
        self.env_rules = env_rules
        self._store = store

    async def rules(self) -> list[AlertRule]:
        """Environment rules first, then the user's saved rules."""
        saved = await self._store.list_rules(self._tenant.fingerprint)
        return [*self.env_rules, *saved]

    async def save(self, kind: str, threshold: float, name: str | None) -> AlertRuleSaved:
        rule = make_rule(kind, threshold, name)
        action, saved = await self._store.save_rule(self._tenant.fingerprint, rule)
        return AlertRuleSaved(rule=rule, action=action, rule_count=len(self.env_rules) + saved)

    async def delete(self, name: str) -> AlertRuleDeleted:
        if any(rule.name == name for rule in self.env_rules):
            raise InvalidInputError(
                f"{shown(name)} comes from the environment (TENSORFEED_ALERT_*); remove the variable to remove it."
            )
        deleted = await self._store.delete_rule(self._tenant.fingerprint, name)
        if deleted is None:
            names = [rule.name for rule in await self.rules()]
            listed = ", ".join(shown(other) for other in names[:5])
            if len(names) > 5:
                listed += f" and {len(names) - 5} more"
            raise InvalidInputError(f"No alert named {shown(name)}. Rules in force: {listed or 'none'}.")
        rule, remaining = deleted
        return AlertRuleDeleted(deleted=rule, rule_count=len(self.env_rules) + remaining)
