"""Throttling rules: make this emulated resource answer like a throttled (or failing) Azure deployment.

Per-request headers (faults.py) need the client's cooperation; failover tests and demos need a
resource that throttles whoever calls it. Rules are set at start (`--throttle SPEC`, repeatable) or
while it runs (`/_emulator/throttle`), and each says which requests fail and how:

    deployment=gpt-4o,status=429,retry_after=30     every request to gpt-4o: 429, Retry-After 30
    count=3                                         the next 3 requests to any deployment
    deployment=gpt-4o,percent=25                    one request in four to gpt-4o, evenly spread

Only requests that reach a deployment (inference calls) are matched, after Azure's own checks
(auth, api-version, deployment, body), as a quota would be. The first rule that matches decides.
Spreading a percentage evenly rather than at random keeps tests exact (25% of 1,000 is 250).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import AzureError
from .faults import injected_error


class ThrottleSpec(BaseModel):
    """One rule as written: on the command line (`key=value,...`) or as JSON."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    deployment: str | None = None  # None: every deployment
    status: int = Field(429, ge=400, le=599)
    retry_after: int | None = Field(None, ge=0)  # seconds; 429s get Azure's default (1) without it
    count: int | None = Field(None, ge=1)  # the next N matching requests, then the rule is spent
    percent: float = Field(100.0, gt=0, le=100)  # this share of the matching requests

    @classmethod
    def parse(cls, text: str) -> ThrottleSpec:
        """`key=value` pairs separated by commas; an empty text is the default rule (429 for all)."""
        fields: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"throttle rule: {item!r} is not key=value")
            fields[key.strip().replace("-", "_")] = value.strip()
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise ValueError(f"throttle rule {text!r}: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]


class ThrottleRule:
    """A spec and what it has done so far."""

    def __init__(self, spec: ThrottleSpec) -> None:
        self.spec = spec
        self.matched = 0  # requests the rule applied to
        self.throttled = 0  # of those, the ones it failed
        self._credit = 0.0  # percent accumulated towards the next failure

    @property
    def spent(self) -> bool:
        return self.spec.count is not None and self.throttled >= self.spec.count

    def matches(self, deployment: str) -> bool:
        return not self.spent and self.spec.deployment in (None, deployment)

    def take(self) -> bool:
        """Count one matching request; True when it is to fail."""
        self.matched += 1
        self._credit += self.spec.percent
        if self._credit < 100:
            return False
        self._credit -= 100
        self.throttled += 1
        return True

    def to_jsonable(self) -> dict[str, Any]:
        remaining = None if self.spec.count is None else self.spec.count - self.throttled
        return {**self.spec.model_dump(), "matched": self.matched, "throttled": self.throttled, "remaining": remaining}


class Throttles:
    """The rules of one emulator instance, in the order they were added."""

    def __init__(self, specs: tuple[ThrottleSpec, ...] = ()) -> None:
        self.rules = [ThrottleRule(spec) for spec in specs]

    def add(self, spec: ThrottleSpec) -> ThrottleRule:
        rule = ThrottleRule(spec)
        self.rules.append(rule)
        return rule

    def clear(self) -> None:
        self.rules.clear()

    def check(self, deployment: str, operation: str, api_version: str) -> AzureError | None:
        """The error to answer this request to `deployment` with, or None to serve it."""
        for rule in self.rules:
            if rule.matches(deployment):
                if rule.take():
                    return injected_error(rule.spec.status, operation, api_version, rule.spec.retry_after)
                return None
        return None
