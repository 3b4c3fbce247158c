"""What `POST /predict` accepts and returns, derived from the served model's signature.

Tabular models get a request schema with one field per input column (numbers for numeric
columns, the training categories for categorical ones); image models get the image shape, as
a nested array or a base64 PNG. The same pydantic models validate each request strictly and
describe it on the OpenAPI page, so the page always shows what the service really checks.

Error messages name the field at fault and never quote the value sent.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, create_model

from components.features import UINT8_SCALE, ImagePreprocessor, TabularPreprocessor
from components.predictor import Predictor

# Beyond about 1e15 a JSON number is no longer an exact integer, and standardised it overflows
# float32 (the network's dtype) into infinity, which would make the answer NaN: refuse it.
MAX_ABS_NUMBER = 1e15
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_NAME_CHARS = 60  # field names quoted in errors are cut to this: a 1 MB key is not echoed

UnknownCategory = Literal["ignore", "error"]


class BadInput(ValueError):
    """A request the service refuses; `status` is the HTTP code, the message names the field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class InputSpec:
    """The request and response models of one served model.

    Attributes:
        key: The body's one field: `rows` (tabular) or `images`.
        request: Validates a parsed body.
        response: Describes a successful answer.
        unknown_category: What a categorical value not seen in training gets: `ignore`
            (encoded as no known category, as in training) or `error` (422).
    """

    key: str
    request: type[BaseModel]
    response: type[BaseModel]
    unknown_category: UnknownCategory = "ignore"


def input_spec(predictor: Predictor, max_rows: int, unknown_category: UnknownCategory = "ignore") -> InputSpec:
    """Build the request and response models for `predictor`.

    Args:
        predictor: The model being served.
        max_rows: Most inputs one request may hold.
        unknown_category: See :class:`InputSpec`.
    """
    prep = predictor.preprocessor
    strict = ConfigDict(extra="forbid", strict=True)
    if isinstance(prep, TabularPreprocessor):
        key, item = "rows", _row_model(prep, unknown_category)
        what = "rows to score, each an object with one field per input column"
    else:
        key, item = "images", _image_item(prep)
        what = f"images to score, each {_shape_words(prep)}"
    batch = Annotated[list[item], Field(min_length=1, max_length=max_rows, description=what)]  # type: ignore[valid-type]
    request = create_model("PredictRequest", __config__=strict, **{key: (batch, ...)})  # type: ignore[call-overload]
    classes = tuple(predictor.classes)
    response = create_model(
        "PredictResponse",
        version=(str, Field(description="The model version that answered.")),
        predictions=(list[Literal[classes]], Field(description="The most probable class of each input.")),  # type: ignore[valid-type]
        probabilities=(list[list[float]], Field(description="Class probabilities of each input, in `classes` order.")),
        classes=(list[str], Field(description="The class labels.")),
    )
    return InputSpec(key, request, response, unknown_category)


def parse_batch(spec: InputSpec, predictor: Predictor, body: Any) -> list[Any] | np.ndarray:
    """Validate a parsed JSON body; rows (as sent) for tabular models, a uint8/float array for images.

    Raises:
        BadInput: 422 naming the field at fault.
    """
    try:
        spec.request.model_validate(body)
    except ValidationError as error:
        raise BadInput(422, _describe(error, spec.key)) from None
    except RecursionError:  # nested past pydantic's own guard
        raise BadInput(422, "body is nested too deeply") from None
    batch = body[spec.key]
    prep = predictor.preprocessor
    if isinstance(prep, ImagePreprocessor):
        return np.stack([_image(item, i, prep) for i, item in enumerate(batch)])
    if spec.unknown_category == "error":
        assert isinstance(prep, TabularPreprocessor)
        found = prep.first_unknown_category(batch)
        if found is not None:
            row, column = found
            known = prep.categories[column]
            shown = ", ".join(map(repr, known[:20])) + (", ..." if len(known) > 20 else "")
            raise BadInput(422, f"row {row}, column {_name(column)}: unknown category; known: {shown}")
    return batch


# --------------------------------------------------------------------------------------------
# Tabular
# --------------------------------------------------------------------------------------------

_Number = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_ABS_NUMBER, le=MAX_ABS_NUMBER)]
_Category = str | _Number | bool  # strict floats accept JSON integers too


def _row_model(prep: TabularPreprocessor, unknown_category: UnknownCategory) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for i, column in enumerate(prep.columns):
        # Field names are positional (column names need not be Python identifiers); the alias
        # is what the JSON carries.
        if column in prep.means:
            description = f"numeric (training mean {prep.means[column]:.4g}); null means the training mean"
            fields[f"f{i}"] = (_Number | None, Field(alias=column, description=description))
        else:
            categories = prep.categories[column]
            if unknown_category == "error":
                schema: dict[str, Any] = {"anyOf": [{"enum": _json_forms(categories)}, {"type": "null"}]}
                description = "categorical: one of the training categories, or null"
            else:
                number = {"type": "number", "minimum": -MAX_ABS_NUMBER, "maximum": MAX_ABS_NUMBER}
                schema = {"anyOf": [{"type": "string"}, number, {"type": "boolean"}, {"type": "null"}]}
                schema["examples"] = categories[:5]
                description = f"categorical; training categories: {categories[:20]}; others count as unknown"
            kind = Annotated[_Category | None, WithJsonSchema(schema)]
            fields[f"f{i}"] = (kind, Field(alias=column, description=description))
    config = ConfigDict(extra="forbid", strict=True, title="Row")
    return create_model("Row", __config__=config, **fields)  # type: ignore[call-overload,no-any-return]


def _json_forms(categories: list[str]) -> list[Any]:
    """The categories as sent in JSON: "True" may come as true, "3" as 3 (they match the same)."""
    forms: list[Any] = list(categories)
    for category in categories:
        if category in ("True", "False"):
            forms.append(category == "True")
        else:
            try:
                number = float(category)
            except ValueError:
                continue
            if math.isfinite(number):
                forms.append(int(number) if number.is_integer() else number)
    return forms


def _describe(error: ValidationError, key: str) -> str:
    """One message for the first problem: where it is and what is wrong, never the value."""
    first = error.errors(include_url=False, include_input=False)[0]
    loc, kind = first["loc"], first["type"]
    if not loc:
        return f"body must be a JSON object with a {key!r} list"
    if len(loc) == 1:
        if kind == "missing":
            return f"body must be a JSON object with a {key!r} list"
        if kind == "extra_forbidden":
            return f"unknown field {_name(loc[0])}: the body holds only {key!r}"
        if kind == "too_short":
            return f"{key!r} is empty: send at least one"
        if kind == "too_long":
            return f"too many {key}: at most {first['ctx']['max_length']} per request"
        return f"{key!r} must be a list"
    index = loc[1]
    if key == "images":
        return f"images[{index}] must be a nested array of numbers or a base64 PNG"
    if len(loc) == 2:
        return f"row {index} must be an object mapping column names to values"
    column = _name(loc[2])
    if kind == "missing":
        return f"row {index}: column {column} is missing"
    if kind == "extra_forbidden":
        return f"row {index}: unknown column {column}"
    if len(loc) > 3:  # a categorical column: the value matched none of the accepted types
        return f"row {index}, column {column}: must be a string, finite number, boolean or null"
    return f"row {index}, column {column}: {first['msg']}"


def _name(value: object) -> str:
    text = str(value)
    text = text if len(text) <= MAX_NAME_CHARS else text[:MAX_NAME_CHARS] + "..."
    # JSON lets a key hold a lone surrogate, which cannot be encoded as UTF-8 in the answer.
    return repr(text.encode("utf-8", "backslashreplace").decode("utf-8"))


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def _shape_words(prep: ImagePreprocessor) -> str:
    c, h, w = prep.shape
    nested = f"a ({c}, {h}, {w}) nested array" + (f" or ({h}, {w})" if c == 1 else "")
    return nested + (" of numbers in [0, 255], or a base64 PNG" if prep.scale == UINT8_SCALE else " of numbers")


def _image_item(prep: ImagePreprocessor) -> Any:
    c, h, w = prep.shape
    number: dict[str, Any] = {"type": "number"}
    if prep.scale == UINT8_SCALE:
        number.update(minimum=0, maximum=255)

    def nested(shape: tuple[int, ...]) -> dict[str, Any]:
        schema = number
        for size in reversed(shape):
            schema = {"type": "array", "minItems": size, "maxItems": size, "items": schema}
        return schema

    options = [nested((c, h, w))] + ([nested((h, w))] if c == 1 else [])
    if prep.scale == UINT8_SCALE:
        options.append(
            {
                "type": "string",
                "contentEncoding": "base64",
                "contentMediaType": "image/png",
                "pattern": "^iVBORw0KGgo",  # the PNG signature, base64-encoded
                "description": f"a {w}x{h} PNG ({'greyscale' if c == 1 else 'RGB'}), base64",
            }
        )
    # Validation is done image by image in `_image`, which can name the image and the problem.
    return Annotated[Any, WithJsonSchema({"oneOf": options})]


def _image(item: Any, i: int, prep: ImagePreprocessor) -> np.ndarray:
    """One image as an array of the model's (c, h, w) shape, range checked."""
    if isinstance(item, str):
        array = _decode_png(item, i, prep)
    else:
        if not isinstance(item, list):
            raise BadInput(422, f"images[{i}] must be a nested array of numbers or a base64 PNG")
        try:
            array = np.asarray(item)
        except (ValueError, TypeError, RecursionError):  # ragged, or nested past numpy's 64 dims
            raise BadInput(422, f"images[{i}] must be a regular nested array of numbers") from None
        if array.dtype.kind not in "iuf":  # strings, booleans, objects (integers past 64 bits)
            raise BadInput(422, f"images[{i}] must hold only numbers")
    if prep.channels == 1 and array.ndim == 2:
        array = array[None]
    if array.shape != prep.shape:
        expected = f"({prep.channels}, {prep.height}, {prep.width})"
        raise BadInput(422, f"images[{i}] must have shape {expected}, got {tuple(array.shape)}")
    if not np.isfinite(array).all():
        raise BadInput(422, f"images[{i}] holds NaN or infinite values")
    if prep.scale == UINT8_SCALE and (array.min() < 0 or array.max() > 255):
        raise BadInput(422, f"images[{i}]: pixel values must lie in [0, 255]")
    return array.astype(np.float32)


def _decode_png(text: str, i: int, prep: ImagePreprocessor) -> np.ndarray:
    if prep.scale != UINT8_SCALE or prep.channels not in (1, 3):
        raise BadInput(422, f"images[{i}]: this model takes images as nested arrays, not PNG")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(422, f"images[{i}] is a string but not valid base64") from None
    if not raw.startswith(PNG_MAGIC):
        raise BadInput(422, f"images[{i}] is not a PNG")
    from PIL import Image  # imported here: only image services need Pillow

    try:
        with Image.open(io.BytesIO(raw), formats=["PNG"]) as image:
            # The header gives the size: check it before decoding any pixels (no decompression bomb).
            if image.size != (prep.width, prep.height):
                width, height = image.size
                raise BadInput(
                    422, f"images[{i}] is {width}x{height} pixels; the model takes {prep.width}x{prep.height}"
                )
            pixels = np.asarray(image.convert("L" if prep.channels == 1 else "RGB"))
    except BadInput:
        raise
    except Exception:  # Pillow raises many types for corrupt files (OSError, SyntaxError, ...)
        raise BadInput(422, f"images[{i}] is not a readable PNG") from None
    return pixels[None] if prep.channels == 1 else pixels.transpose(2, 0, 1)
