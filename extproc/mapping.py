"""OpenAI model name -> Azure deployment name."""

from __future__ import annotations

from typing import Mapping

from .config import UnmappedModelPolicy

_NOT_DEPLOYMENT_NAMES = frozenset({"", ".", ".."})


class ModelMapper:
    def __init__(self, models: Mapping[str, str], policy: UnmappedModelPolicy) -> None:
        self._models = dict(models)
        self._policy = policy
        self.known_models: tuple[str, ...] = tuple(sorted(self._models))
        self.known_deployments: tuple[str, ...] = tuple(sorted(set(self._models.values())))
        self._deployment_set = frozenset(self.known_deployments)
        # Under `reject` only the mapped deployments may be called, whatever form the request has.
        self.rejects_unknown = policy is UnmappedModelPolicy.REJECT

    def deployment_for(self, model: str) -> str | None:
        """The deployment to call, or None when the policy rejects an unmapped model."""
        deployment = self._models.get(model)
        if deployment is not None:
            return deployment
        if self._policy is UnmappedModelPolicy.PASSTHROUGH:
            deployment = model
        elif self._policy is UnmappedModelPolicy.STRIP_DOTS:
            deployment = model.replace(".", "").replace(":", "")
        else:
            return None
        # `.` and `..` would leave /openai/deployments/ in the path (quote() keeps dots); `` is none.
        return None if deployment in _NOT_DEPLOYMENT_NAMES else deployment

    def allows_deployment(self, deployment: str) -> bool:
        """Whether a request naming the deployment itself (Azure form) may be sent on."""
        return not self.rejects_unknown or deployment in self._deployment_set
