"""The one configuration model: schema (pydantic), the older proxies' environment variables (a
table), loading, and redaction for display. Imported by the command line, the runtime and the Envoy
renderer; never by the request path's core (it gets a compiled `Gateway`)."""

from ..routing import UnmappedModelPolicy
from .loading import CONFIG_PATH_ENV, load_settings
from .redaction import redacted_dump
from .schema import (
    DEFAULT_API_VERSION,
    BackendSettings,
    ConfigError,
    EndpointSettings,
    Settings,
)

__all__ = [
    "CONFIG_PATH_ENV",
    "DEFAULT_API_VERSION",
    "BackendSettings",
    "ConfigError",
    "EndpointSettings",
    "Settings",
    "UnmappedModelPolicy",
    "load_settings",
    "redacted_dump",
]
