"""The pure translation core: an OpenAI API request in, a decision out.

No gRPC, no Envoy types, no I/O, no clock: everything it needs comes compiled in a `Gateway`
(extproc/compile.py builds it from the settings). It imports only `routing` and `auth`, whose
request-path methods read memory only.
"""
