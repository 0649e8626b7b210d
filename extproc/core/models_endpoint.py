"""`GET /v1/models` and `GET /v1/models/{id}`, answered from the model map in OpenAI's list format."""

from __future__ import annotations

from urllib.parse import unquote

import orjson

from . import errors
from .decision import Reply


class ModelsEndpoint:
    """Every answer built once: they change only with the config. `created` is the compile time."""

    def __init__(self, known_models: tuple[str, ...], created: int) -> None:
        self._known = known_models
        self._created = created
        objects = [{"id": name, "object": "model", "created": created, "owned_by": "azure-openai"} for name in known_models]
        self._list = Reply(200, orjson.dumps({"object": "list", "data": objects}))
        self._models = {obj["id"]: Reply(200, orjson.dumps(obj)) for obj in objects}

    def only(self, models: frozenset[str]) -> ModelsEndpoint:
        """The same answers for a client that may use only `models`."""
        return ModelsEndpoint(tuple(name for name in self._known if name in models), self._created)

    def answer(self, method: str, path: str) -> Reply:
        if method != "GET":
            return errors.invalid_url(method, path)
        if path == "/v1/models":
            return self._list
        model = unquote(path.removeprefix("/v1/models/"))
        found = self._models.get(model)
        if found is None:
            return errors.model_not_found(model, self._known)
        return found
