"""Where a request goes: model name -> (backend, deployment), and the backends themselves.

Today there is one backend (the `azure:` section, named `default`); pools, failover and the
circuit breaker will live here. Pure: no I/O; compiled once per worker (extproc/compile.py).
"""

from .backends import DEFAULT_BACKEND, Backend, cluster_name
from .models import ModelMapper, Target, UnmappedModelPolicy, is_deployment_name

__all__ = ["DEFAULT_BACKEND", "Backend", "ModelMapper", "Target", "UnmappedModelPolicy", "cluster_name",
           "is_deployment_name"]
