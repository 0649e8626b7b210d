"""Credentials both ways: upstream providers (static key, key file re-read on change, the client's own
key) and what the client presented; the 401s that say what was wrong."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import orjson
import pytest

from extproc.auth.client import presented_key
from extproc.auth.keyfiles import CredentialError
from extproc.auth.upstream import ApiKeyFile, ClientKeyAsApiKey, StaticApiKey
from extproc.core import errors


def test_static_key_is_the_api_key_header_whatever_the_client_sent() -> None:
    assert StaticApiKey("k").headers_for("Bearer client", "c2") == (("api-key", "k"),)


def test_key_file_is_read_again_when_it_changes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "key"
    path.write_text("first\n")
    provider = ApiKeyFile(path, "azure.api_key_file")
    assert provider.headers_for("", "") == (("api-key", "first"),)
    path.write_text("second")  # same size or not: the identity and times change
    os.utime(path, ns=(1, 1))
    assert provider.refresh() and provider.headers_for("", "") == (("api-key", "second"),)
    with caplog.at_level(logging.INFO):
        path.unlink()
        assert provider.refresh() and provider.refresh()  # the last key stays in use
        path.write_text("   \n")
        assert provider.refresh() and provider.refresh()
    assert provider.headers_for("", "") == (("api-key", "second"),)
    assert "second" not in caplog.text
    assert caplog.text.count("cannot read") == 1 and caplog.text.count("is empty") == 1  # once per state, not per look
    path.write_text("third")
    assert provider.refresh() and provider.headers_for("", "") == (("api-key", "third"),)


def test_key_file_that_is_missing_or_empty_at_start_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match="azure.api_key_file: cannot read"):
        ApiKeyFile(tmp_path / "nowhere", "azure.api_key_file")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(CredentialError, match="is empty"):
        ApiKeyFile(tmp_path / "empty", "azure.api_key_file")


def test_without_a_server_key_the_clients_own_key_goes_upstream() -> None:
    provider = ClientKeyAsApiKey()
    assert not provider.reusable
    assert provider.headers_for("Bearer tok ", "") == (("api-key", "tok"),)
    assert provider.headers_for("", "azure-style") == (("api-key", "azure-style"),)
    assert provider.headers_for("Basic dXNlcg==", "") is None
    assert presented_key("bearer  x", "") == "x" and presented_key("Bearer ", "") is None


def message(reply) -> str:
    return orjson.loads(reply.body)["error"]["message"]


def test_a_401_says_what_the_client_sent() -> None:
    assert "didn't provide an API key" in message(errors.missing_api_key(""))
    basic = errors.missing_api_key("Basic dXNlcjpwdw==")
    assert basic.status == 401 and "`Basic` scheme" in message(basic) and "dXNlcjpwdw" not in message(basic)
    assert "`Bearer` scheme, or has no token" in message(errors.missing_api_key("Bearer "))
    odd = errors.missing_api_key("\x01weird-scheme-that-is-rather-long-and-odd x")
    assert "`another` scheme" in message(odd)
