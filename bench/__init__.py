"""The benchmark: the ext_proc's cost beside Envoy alone (`python -m bench --help`)."""
