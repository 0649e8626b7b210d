"""Bring your own key, in the Node proxy's format: the client's bearer token names its own Azure resource, the
deployment (or a model -> deployment map), its key and optionally an api-version:

    RESOURCE:DEPLOYMENT:KEY[:API_VERSION]
    RESOURCE:model1|deployment1,model2|deployment2:KEY[:API_VERSION]

RESOURCE must be an Azure resource name: the host is always RESOURCE.<the configured suffix>, never a host the
client spells out (no open proxy, no request forgery towards other hosts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from .models import is_deployment_name

# Azure's rule for a Cognitive Services account's custom subdomain: 2-64 letters, digits and hyphens, starting
# and ending with a letter or digit.
RESOURCE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?")
API_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}(?:-preview)?")
KEY = re.compile(r"[A-Za-z0-9]{16,128}")  # Azure's keys: 32 hex digits, or 84 letters and digits


@dataclass(frozen=True, slots=True)
class ByokKey:
    resource: str
    key: str
    deployment: str | None  # every model goes to this deployment
    deployments: Mapping[str, str] | None  # or each model to its own
    api_version: str | None

    def deployment_for(self, model: str) -> str | None:
        if self.deployment is not None:
            return self.deployment
        assert self.deployments is not None
        return self.deployments.get(model)

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(sorted(self.deployments)) if self.deployments else ()


class NotByok(Exception):
    """The bearer token is shaped like one (it has a `:`) but is not valid; the message says which part."""


def parse_byok(token: str) -> ByokKey | None:
    """The parts of a bring-your-own-key token; None when the token has no `:` (an ordinary key);
    NotByok when it has one but is malformed."""
    if ":" not in token:
        return None
    parts = token.split(":")
    if len(parts) not in (3, 4):
        raise NotByok("expected RESOURCE:DEPLOYMENT:KEY or RESOURCE:DEPLOYMENT:KEY:API_VERSION")
    resource, target, key = parts[0].lower(), parts[1], parts[2]
    api_version = parts[3] if len(parts) == 4 else None
    if not RESOURCE_NAME.fullmatch(resource):
        raise NotByok("RESOURCE must be an Azure resource name (letters, digits and hyphens)")
    if not KEY.fullmatch(key):
        raise NotByok("KEY must be the resource's key (letters and digits)")
    if api_version is not None and not API_VERSION.fullmatch(api_version):
        raise NotByok("API_VERSION must look like 2024-10-21 or 2025-04-01-preview")
    if "|" not in target:
        if not is_deployment_name(target):
            raise NotByok("DEPLOYMENT must be an Azure deployment name")
        return ByokKey(resource, key, target, None, api_version)
    deployments: dict[str, str] = {}
    for pair in target.split(","):
        model, bar, deployment = pair.partition("|")
        if not bar or not model or not is_deployment_name(deployment) or model in deployments:
            raise NotByok("expected model1|deployment1,model2|deployment2 (each model once)")
        deployments[model] = deployment
    return ByokKey(resource, key, None, deployments, api_version)
