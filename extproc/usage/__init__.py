"""The usage process: Envoy's gRPC access log of every request in; Prometheus metrics, the status page, and the
client keys' token spend (for their token limits, through extproc/usage/board.py) out. Never on the request path:
Envoy reports a request after it ended, batched."""
