"""Credentials, both ways.

- `upstream`: what authenticates a request to a backend (today an `api-key`: static, or read from a
  file that is re-read when it changes). Entra ID tokens will be one more provider.
- `client`: what the client presented (`Authorization: Bearer`, `api-key`); client keys will live here.

Pure on the request path: a provider's `headers_for` reads memory only; file reads happen at compile
time and in `refresh()`, which the worker calls off the request path.
"""
