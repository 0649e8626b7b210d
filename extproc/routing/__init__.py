"""Where a request goes: model name -> (backend, deployment), and the backends themselves.

The `azure:` section is the backend named `default`; `backends:` adds others, which pools use.
The circuit breaker will live here. Pure: no I/O; compiled once per worker (extproc/compile.py).
"""

from .backends import BYOK_CLUSTER, DEFAULT_BACKEND, POOL_METADATA_NAMESPACE, REQUEST_METADATA_NAMESPACE, Backend, cluster_name, pool_cluster_name
from .models import ModelMapper, Pool, PoolMember, Target, UnmappedModelPolicy, is_deployment_name

__all__ = ["BYOK_CLUSTER", "DEFAULT_BACKEND", "POOL_METADATA_NAMESPACE", "REQUEST_METADATA_NAMESPACE", "Backend", "ModelMapper", "Pool", "PoolMember", "Target", "UnmappedModelPolicy",
           "cluster_name", "is_deployment_name", "pool_cluster_name"]
