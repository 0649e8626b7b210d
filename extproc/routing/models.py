"""OpenAI model name -> where it is served: a deployment on a backend."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Mapping

from .backends import Backend

# What Azure allows as a deployment name: 1-64 letters, digits, `-`, `_` and `.`; here also not
# starting or ending with `.` (a trailing dot may be dropped by the server, so `a.` could mean `a`).
# Anything else (`/`, `%`, `..`, controls) is never sent: it could only address something else.
DEPLOYMENT_NAME = re.compile(r"[A-Za-z0-9_-](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9_-])?")


def is_deployment_name(name: str) -> bool:
    return DEPLOYMENT_NAME.fullmatch(name) is not None


class UnmappedModelPolicy(str, Enum):
    PASSTHROUGH = "passthrough"  # use the model name as the deployment name (the FastAPI proxy)
    STRIP_DOTS = "strip_dots"  # gpt-3.5-turbo -> gpt-35-turbo (the Go proxy)
    REJECT = "reject"  # 404 model_not_found naming the known models


@dataclass(frozen=True, slots=True)
class Target:
    backend: Backend
    deployment: str


@dataclass(frozen=True, slots=True)
class PoolMember:
    """One member of a pool: `id` names it in Envoy (its endpoint's metadata `aoai.member`), `circuit`
    its (backend, deployment) in the circuit breaker (`Settings.circuits`' numbering)."""

    id: str
    backend: Backend
    deployment: str
    circuit: int = 0


@dataclass(frozen=True, slots=True)
class Pool:
    """A model served by several deployments: Envoy's cluster `cluster` has one endpoint per member
    and picks among them (priority, weight), failing over inside the request; the ext_proc tells it
    each member's path and credential."""

    cluster: str
    members: tuple[PoolMember, ...]
    max_attempts: int = 3  # failover.max_attempts

    @property
    def circuits(self) -> tuple[int, ...]:
        return tuple(member.circuit for member in self.members)


class ModelMapper:
    """The model map (a deployment on the default backend, or a pool) and the policy for names outside it."""

    def __init__(self, models: Mapping[str, str | Pool], policy: UnmappedModelPolicy, backend: Backend) -> None:
        self.default_backend = backend  # unmapped models and requests that name no model (files, Azure form) go here
        self._targets: dict[str, Target | Pool] = {
            model: target if isinstance(target, Pool) else Target(backend, target) for model, target in models.items()
        }
        self._policy = policy
        self.known_models: tuple[str, ...] = tuple(sorted(models))
        deployments = {
            name for target in models.values()
            for name in ((m.deployment for m in target.members) if isinstance(target, Pool) else (target,))
        }
        self.known_deployments: tuple[str, ...] = tuple(sorted(deployments))
        self._deployment_set = frozenset(self.known_deployments)
        # Under `reject` only the mapped deployments may be called, whatever form the request has.
        self.rejects_unknown = policy is UnmappedModelPolicy.REJECT

    def target_for(self, model: str) -> Target | Pool | None:
        """Where to send a request for `model`; None when the policy rejects an unmapped model, or
        when the name it makes (passthrough, strip_dots) is not a deployment name Azure allows."""
        target = self._targets.get(model)
        if target is not None:
            return target
        if self._policy is UnmappedModelPolicy.PASSTHROUGH:
            deployment = model
        elif self._policy is UnmappedModelPolicy.STRIP_DOTS:
            deployment = model.replace(".", "").replace(":", "")
        else:
            return None
        return Target(self.default_backend, deployment) if is_deployment_name(deployment) else None

    def default_backend_deployments_of(self, models: frozenset[str]) -> frozenset[str]:
        """The deployments on the default backend that serve these models (Azure-form requests go there:
        a pool member's name on another backend may name something else on the default one)."""
        return self.deployments_of(models, self.default_backend)

    def deployments_of(self, models: frozenset[str], backend: Backend) -> frozenset[str]:
        """The deployments on `backend` that serve these models."""
        names: set[str] = set()
        for model in models:
            target = self.target_for(model)
            if isinstance(target, Pool):
                names.update(m.deployment for m in target.members if m.backend is backend)
            elif target is not None and target.backend is backend:
                names.add(target.deployment)
        return frozenset(names)

    def allows_deployment(self, deployment: str) -> bool:
        """Whether a request naming the deployment itself (Azure form) may be sent on."""
        return not self.rejects_unknown or deployment in self._deployment_set
