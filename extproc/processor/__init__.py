"""One ext_proc call: Envoy's protobuf messages in, the core's decision applied, protobuf out.

`messages` builds and reads the protobufs (headers in, header mutations and immediate responses
out); `call` is the exchange itself as a synchronous state machine over serialized messages, which
any transport in `rpc` can serve.
"""
