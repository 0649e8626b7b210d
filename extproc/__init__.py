"""aoai-gateway: OpenAI API clients in front, Azure OpenAI behind, Envoy in between.

The package holds the ext_proc service (the decisions), the Envoy config renderer, the
`up` supervisor, and an Azure OpenAI emulator for tests and local runs.
"""

__version__ = "0.1.0"
