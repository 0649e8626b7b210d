"""The processes: a worker (compile the gateway, serve it on one socket), the supervisor that keeps
the workers running (`serve`), and `up` (Envoy + workers + the emulator when there is no Azure)."""
