"""A backend: one upstream resource (an Azure OpenAI endpoint), as the request path sees it."""

from __future__ import annotations

from dataclasses import dataclass

from ..auth.upstream import UpstreamCredential

DEFAULT_BACKEND = "default"  # the backend of the `azure:` section and the AZURE_OPENAI_* variables


def cluster_name(backend: str) -> str:
    """The Envoy cluster of a backend (the default one keeps its historical name, `azure`)."""
    return "azure" if backend == DEFAULT_BACKEND else f"backend-{backend}"


# Where the ext_proc tells Envoy how to call each member of a pool: one dynamic metadata namespace
# per member, this prefix + the member's id (extproc/processor/messages.py writes them, the pool
# clusters' upstream Lua filter reads its member's, envoy_config lists them as accepted).
POOL_METADATA_NAMESPACE = "aoai.pool."
# What a request is for (model, deployment, backend, client): Envoy's access logs and the usage process read it.
REQUEST_METADATA_NAMESPACE = "aoai.request"


BYOK_CLUSTER = "byok"  # bring your own key: Envoy's dynamic forward proxy to the clients' own resources


def pool_cluster_name(index: int) -> str:
    """The Envoy cluster of the `index`-th pool in the settings' `models` (rendering uses the same order)."""
    return f"pool-{index}"


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    cluster: str  # the Envoy cluster that reaches it
    credential: UpstreamCredential  # the headers that authenticate a request to it
