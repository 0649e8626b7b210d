"""The circuit breaker: one state for the whole gateway, kept by one process (`service`).

Envoy reports each failed try of a pool request to it (a gRPC access log, off the request path);
it trips members (`circuits`, pure) and publishes the result twice: to Envoy as the members' active
health checks (a tripped member fails its check, so Envoy's load balancer skips it), and to every
ext_proc worker as a small shared file (`board`), so a request whose members are all tripped is
answered 429 at once without a call to Azure.
"""
