"""The `model` a request body names, read the one way for every route: JSON or multipart/form-data.

Anything two readers could see differently (a second `model`, a case variant, a model sent as a
file) is refused here, so the model checked is the model Azure serves.
"""

from __future__ import annotations

from typing import NamedTuple

from . import errors
from .decision import Reply
from .jsonbody import InvalidJson, TooManyMembers, kind_of, names_more_than_once, parse_json
from .multipart import DuplicateFieldError, FormField, MultipartError, TooManyParts, boundary_of, find_field, is_multipart


class BodyModel(NamedTuple):
    """What a body names: its `model` (None when absent or not a string) and, for multipart bodies,
    where that value lies (for an in-place rewrite)."""

    value: object  # the JSON value (any type), the form field's text, or None
    field: FormField | None = None  # multipart only
    document: dict[str, object] | None = None  # JSON only: the parsed top-level object


def read_model(
    body: bytes, content_type: str, *, multipart_only: bool = False, require_object: bool = True
) -> BodyModel | Reply:
    """The body's model, or the 400 that refuses the body. A JSON body that is not an object is
    refused with `require_object`, else it names no model."""
    if is_multipart(content_type):
        return _multipart_model(body, content_type)
    if multipart_only:
        return errors.INVALID_MULTIPART
    try:
        document = parse_json(body)
    except TooManyMembers:
        return errors.TOO_MANY_MEMBERS
    except InvalidJson:
        return errors.INVALID_JSON
    if not isinstance(document, dict):
        return errors.body_not_object(kind_of(document)) if require_object else BodyModel(None)
    # Several `model`s: parsers differ on which counts, so the one checked here might not be
    # the one Azure reads (v1 surface, responses). Refused everywhere, for one rule.
    try:
        if names_more_than_once(body, document, "model"):
            return errors.DUPLICATE_MODEL
    except TooManyMembers:
        return errors.TOO_MANY_MEMBERS
    except InvalidJson:  # parsed, yet not walkable: not expected; never forward what was not checked
        return errors.INVALID_JSON
    return BodyModel(document.get("model"), document=document)


def _multipart_model(body: bytes, content_type: str) -> BodyModel | Reply:
    boundary = boundary_of(content_type)
    if boundary is None:  # multipart/mixed, or no boundary: nothing Azure can read either
        return errors.INVALID_MULTIPART
    try:
        field = find_field(body, boundary, "model")
    except DuplicateFieldError:
        return errors.DUPLICATE_MODEL
    except TooManyParts:
        return errors.TOO_MANY_PARTS
    except MultipartError:
        return errors.INVALID_MULTIPART
    return BodyModel(field.value if field is not None else None, field=field)


MAX_MODEL_LENGTH = 256


def model_name(found: BodyModel) -> str | Reply:
    """The model a request to a deployment must name: a non-empty string of valid Unicode, of a
    length a name can have (a 60 KiB model would not fit in a request line)."""
    model = found.value
    if model is None or model == "":
        return errors.MISSING_MODEL
    if not isinstance(model, str):
        return errors.MODEL_NOT_STRING
    if len(model) > MAX_MODEL_LENGTH:
        return errors.MODEL_TOO_LONG
    if not model.isascii() and not _is_text(model):
        return errors.MODEL_NOT_TEXT
    return model


def _is_text(value: str) -> bool:
    """Whether the string encodes to UTF-8: JSON's `\\ud800` escape decodes to a lone surrogate,
    which no path or body can carry."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True
