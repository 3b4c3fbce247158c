"""The REST service: endpoints, the same numbers as the predictor, 4xx for every bad input, hot swap."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from components.features import ImagePreprocessor, TabularPreprocessor
from components.models import build_model
from components.predictor import Predictor
from components.serving import LoadedModel, create_app

FRAME = pd.DataFrame(
    {
        "age": [20, 30, 40, 50],
        "sex": ["Male", "Female", "Male", "Female"],
        "employed": [True, False, True, True],
    }
)
ROWS = FRAME.to_dict(orient="records")


def tabular_predictor(seed: int = 0) -> Predictor:
    torch.manual_seed(seed)
    prep = TabularPreprocessor.fit(FRAME, ["age", "sex", "employed"])
    params = {"in_features": prep.width, "n_classes": 2, "hidden": [4]}
    return Predictor(build_model("mlp", **params), prep, ["No", "Yes"], "mlp", params)


def image_predictor() -> Predictor:
    torch.manual_seed(0)
    prep = ImagePreprocessor.fit(np.arange(32, dtype=np.uint8).reshape(2, 4, 4))
    params = {"in_channels": 1, "height": 4, "width": 4, "n_classes": 3, "channels": [2]}
    return Predictor(build_model("cnn", **params), prep, ["a", "b", "c"], "cnn", params)


class SwitchableLoader:
    """A loader whose answer the test changes, like a registry whose champion alias moves."""

    def __init__(self, model: LoadedModel | None) -> None:
        self.model = model
        self.fail = False
        self.calls = 0

    def __call__(self) -> LoadedModel | None:
        self.calls += 1
        if self.fail:
            raise RuntimeError("registry unreachable")
        return self.model


@pytest.fixture
def predictor() -> Predictor:
    return tabular_predictor()


@pytest.fixture
def client(predictor: Predictor) -> Iterator[TestClient]:
    loaded = LoadedModel("3", predictor, {"alias": "champion", "data_version": "abc"})
    app = create_app(SwitchableLoader(loaded), pipeline="toy", poll_seconds=0, max_body_bytes=2_000)
    with TestClient(app) as client:
        yield client


def test_health_ready_metadata(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["version"] == "3"
    meta = client.get("/metadata").json()
    assert meta["pipeline"] == "toy" and meta["version"] == "3" and meta["alias"] == "champion"
    assert meta["info"]["data_version"] == "abc"
    assert meta["classes"] == ["No", "Yes"]
    assert [c["name"] for c in meta["input_schema"]] == ["age", "sex", "employed"]


def test_not_ready_without_model() -> None:
    with TestClient(create_app(SwitchableLoader(None), pipeline="toy", poll_seconds=0)) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/ready").status_code == 503
        assert client.get("/metadata").status_code == 503
        response = client.post("/predict", json={"rows": ROWS})
        assert response.status_code == 503 and "no model loaded" in response.json()["detail"]


def test_failing_loader_at_startup_leaves_the_app_up() -> None:
    loader = SwitchableLoader(None)
    loader.fail = True
    with TestClient(create_app(loader, pipeline="toy", poll_seconds=0)) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/ready").status_code == 503


def test_predict_matches_predictor(client: TestClient, predictor: Predictor) -> None:
    response = client.post("/predict", json={"rows": ROWS})
    assert response.status_code == 200
    body = response.json()
    expected = predictor.predict_proba(FRAME)
    assert body["version"] == "3" and body["classes"] == ["No", "Yes"]
    assert np.array_equal(np.asarray(body["probabilities"], dtype=np.float32), expected)
    assert body["predictions"] == predictor.predict(FRAME)


def test_predict_images_matches_predictor() -> None:
    predictor = image_predictor()
    images = np.random.default_rng(0).integers(0, 256, size=(3, 4, 4)).tolist()
    app = create_app(SwitchableLoader(LoadedModel("1", predictor, {})), pipeline="digits", poll_seconds=0)
    with TestClient(app) as client:
        body = client.post("/predict", json={"images": images}).json()
        assert np.array_equal(np.asarray(body["probabilities"], dtype=np.float32), predictor.predict_proba(images))
        wrong = client.post("/predict", json={"images": [[[0, 1, 2]]]})
        assert wrong.status_code == 422 and "shape" in wrong.json()["detail"]
        assert client.post("/predict", json={"images": [[[0] * 4] * 4] * 2 + [[[-5] * 4] * 4]}).status_code == 422
        assert client.post("/predict", json={"rows": ROWS}).status_code == 422


def _row(**changes: object) -> dict[str, object]:
    return {**ROWS[0], **changes}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"rows": [{"age": 20, "employed": True}]}, "'sex'"),
        ({"rows": [_row(age="twenty")]}, "'age'"),
        ({"rows": [_row(age=True)]}, "'age'"),
        ({"rows": [_row(sex={"a": 1})]}, "'sex'"),
        ({"rows": []}, "empty"),
        ({"rows": {"age": 20}}, "must be a list"),
        ({"rows": [ROWS[0], 7]}, "row 1"),
        ({"records": ROWS}, "'rows'"),
        ([ROWS[0]], "'rows'"),
    ],
)
def test_bad_rows_give_422_naming_the_problem(client: TestClient, body: object, fragment: str) -> None:
    response = client.post("/predict", content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert fragment in detail
    assert "twenty" not in detail and "Traceback" not in detail  # no echo, no stack trace


def test_nan_and_infinity_literals_are_rejected(client: TestClient) -> None:
    for literal in ("NaN", "Infinity", "-Infinity"):
        content = '{"rows": [{"age": ' + literal + ', "sex": "Male", "employed": true}]}'
        response = client.post("/predict", content=content, headers={"content-type": "application/json"})
        assert response.status_code == 422
        assert "row 0, column 'age'" in response.json()["detail"]
    # Valid JSON, but Python parses it to infinity: the model's strict check catches it.
    content = '{"rows": [{"age": 1e999, "sex": "Male", "employed": true}]}'
    response = client.post("/predict", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "'age'" in response.json()["detail"]


def test_too_many_rows(predictor: Predictor) -> None:
    app = create_app(lambda: LoadedModel("1", predictor, {}), pipeline="toy", poll_seconds=0, max_rows=3)
    with TestClient(app) as client:
        response = client.post("/predict", json={"rows": ROWS})
        assert response.status_code == 422 and "at most 3" in response.json()["detail"]


def test_invalid_json_content_type_and_size(client: TestClient) -> None:
    bad = client.post("/predict", content='{"rows": [', headers={"content-type": "application/json"})
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["detail"]
    text = client.post("/predict", content=json.dumps({"rows": ROWS}), headers={"content-type": "text/plain"})
    assert text.status_code == 415 and "application/json" in text.json()["detail"]
    big = client.post("/predict", json={"rows": [ROWS[0]] * 100})
    assert big.status_code == 413 and "2000 bytes" in big.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the actual size must be counted
        yield b'{"rows": ['
        for _ in range(100):
            yield json.dumps(ROWS[0]).encode() + b","
        yield json.dumps(ROWS[0]).encode() + b"]}"

    chunked = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413


def test_deeply_nested_body_is_400(predictor: Predictor) -> None:
    with TestClient(create_app(lambda: LoadedModel("1", predictor, {}), pipeline="toy", poll_seconds=0)) as client:
        content = "[" * 100_000 + "]" * 100_000  # past any recursion limit of the JSON parser
        deep = client.post("/predict", content=content, headers={"content-type": "application/json"})
        assert deep.status_code == 400 and "nested too deeply" in deep.json()["detail"]


def test_refresh_swaps_version_without_restart(predictor: Predictor) -> None:
    loader = SwitchableLoader(LoadedModel("1", predictor, {}))
    app = create_app(loader, pipeline="toy", poll_seconds=0)
    with TestClient(app) as client:
        assert client.get("/ready").json()["version"] == "1"
        other = tabular_predictor(seed=1)
        loader.model = LoadedModel("2", other, {})
        assert app.state.refresh() is True
        assert app.state.refresh() is False  # same version: nothing to do
        body = client.post("/predict", json={"rows": ROWS}).json()
        assert body["version"] == "2"
        assert np.array_equal(np.asarray(body["probabilities"], dtype=np.float32), other.predict_proba(FRAME))
        # A loader that fails or finds nothing keeps the current model in service.
        loader.model = None
        assert app.state.refresh() is False
        loader.fail = True
        with pytest.raises(RuntimeError):
            app.state.refresh()
        assert client.get("/ready").json()["version"] == "2"


def test_background_poll_picks_up_new_version(predictor: Predictor) -> None:
    loader = SwitchableLoader(LoadedModel("1", predictor, {}))
    with TestClient(create_app(loader, pipeline="toy", poll_seconds=0.01)) as client:
        assert client.get("/ready").json()["version"] == "1"
        loader.fail = True  # polling errors are logged and the old model keeps serving
        calls = loader.calls
        _wait_for(lambda: loader.calls > calls + 1)
        assert client.get("/ready").json()["version"] == "1"
        loader.fail = False
        loader.model = LoadedModel("2", tabular_predictor(seed=1), {})
        _wait_for(lambda: client.get("/ready").json()["version"] == "2")


def _wait_for(condition: object, attempts: int = 500) -> None:
    # A bounded wait for the background task, not a timing assertion.
    for _ in range(attempts):
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError("the background poll never got there")


def test_openapi_shows_the_served_models_schema(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    row = schemas["Row"]
    assert list(row["properties"]) == ["age", "sex", "employed"] and row["required"] == ["age", "sex", "employed"]
    assert row["additionalProperties"] is False
    assert row["properties"]["sex"]["examples"] == ["Female", "Male"]
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/PredictRequest"}
    assert schemas["PredictResponse"]["properties"]["predictions"]["items"]["enum"] == ["No", "Yes"]
    assert {"400", "413", "415", "422", "503"} <= set(spec["paths"]["/predict"]["post"]["responses"])

    app = create_app(SwitchableLoader(LoadedModel("1", image_predictor(), {})), pipeline="digits", poll_seconds=0)
    with TestClient(app) as images:
        item = images.get("/openapi.json").json()["components"]["schemas"]["PredictRequest"]["properties"]["images"]
    nested, flat, png = item["items"]["oneOf"]
    assert (nested["minItems"], nested["items"]["minItems"], nested["items"]["items"]["maxItems"]) == (1, 4, 4)
    assert flat["items"]["items"] == {"type": "number", "minimum": 0, "maximum": 255}
    assert png["contentMediaType"] == "image/png"


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        (_row(extra=1), "row 0: unknown column 'extra'"),
        (_row(age="30"), "row 0, column 'age'"),  # strict: a number must be a JSON number
        (_row(age=1e16), "row 0, column 'age'"),  # finite, but beyond what the model can score
        (_row(sex=[1]), "row 0, column 'sex': must be a string, finite number, boolean or null"),
        ({**_row(), "x" * 1_000: 1}, "row 0: unknown column 'xxxxx"),
    ],
)
def test_strict_row_validation(client: TestClient, row: dict[str, object], fragment: str) -> None:
    response = client.post("/predict", json={"rows": [row]})
    assert response.status_code == 422 and fragment in response.json()["detail"]
    assert len(response.json()["detail"]) < 200  # a long name is cut, not echoed


def test_unknown_categories_ignored_or_refused_as_configured(predictor: Predictor) -> None:
    rows = [_row(), _row(sex="Robot-secret")]
    loader = SwitchableLoader(LoadedModel("1", predictor, {}))
    with TestClient(create_app(loader, pipeline="toy", poll_seconds=0)) as lenient:
        body = lenient.post("/predict", json={"rows": rows}).json()
        assert np.array_equal(np.asarray(body["probabilities"], dtype=np.float32), predictor.predict_records(rows))
    with TestClient(create_app(loader, pipeline="toy", poll_seconds=0, unknown_category="error")) as strict:
        response = strict.post("/predict", json={"rows": rows})
        detail = response.json()["detail"]
        assert response.status_code == 422 and "row 1, column 'sex': unknown category" in detail
        assert "'Female', 'Male'" in detail and "Robot" not in detail
        assert strict.post("/predict", json={"rows": [_row(sex=None)]}).status_code == 200  # missing, not unknown
        assert strict.get("/metadata").json()["unknown_category"] == "error"


def _png(image: np.ndarray) -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image.astype(np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_images_as_base64_png_score_like_arrays() -> None:
    predictor = image_predictor()
    images = np.random.default_rng(1).integers(0, 256, size=(3, 4, 4))
    app = create_app(SwitchableLoader(LoadedModel("1", predictor, {})), pipeline="digits", poll_seconds=0)
    with TestClient(app) as client:
        batch = [_png(images[0]), images[1].tolist(), _png(images[2])]  # one request may mix both
        body = client.post("/predict", json={"images": batch}).json()
        assert np.array_equal(np.asarray(body["probabilities"], dtype=np.float32), predictor.predict_proba(images))
        too_big = client.post("/predict", json={"images": [_png(np.zeros((5, 4)))]})
        assert too_big.status_code == 422 and too_big.json()["detail"] == "images[0] is 4x5 pixels; the model takes 4x4"
        garbage = client.post("/predict", json={"images": [images[0].tolist(), "iVBORw0KGgo="]})
        assert garbage.status_code == 422 and garbage.json()["detail"] == "images[1] is not a readable PNG"


def _sample(metrics: str, name: str) -> float | None:
    for line in metrics.splitlines():
        if line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_in_prometheus_format(predictor: Predictor) -> None:
    loader = SwitchableLoader(LoadedModel("1", predictor, {"alias": "champion"}))
    app = create_app(loader, pipeline="toy", poll_seconds=0)
    with TestClient(app) as client:
        assert client.post("/predict", json={"rows": ROWS}).status_code == 200
        assert client.post("/predict", json={"rows": []}).status_code == 422
        assert client.get("/no-such-path").status_code == 404
        loader.model = LoadedModel("2", tabular_predictor(seed=1), {"alias": "champion"})
        app.state.refresh()
        response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=")
    text = response.text
    assert _sample(text, 'deepgate_http_requests_total{method="POST",route="/predict",status="200"}') == 1
    assert _sample(text, 'deepgate_http_errors_total{route="/predict",status="422"}') == 1
    assert _sample(text, 'deepgate_http_requests_total{method="GET",route="other",status="404"}') == 1
    assert _sample(text, 'deepgate_http_request_duration_seconds_count{route="/predict"}') == 2
    assert _sample(text, 'deepgate_predictions_total{version="1"}') == len(ROWS)
    assert _sample(text, 'deepgate_model_info{alias="champion",pipeline="toy",version="2"}') == 1
    assert 'deepgate_model_info{alias="champion",pipeline="toy",version="1"}' not in text
    assert _sample(text, "deepgate_model_swaps_total") == 1


def test_prediction_log_samples_off_the_request_path(predictor: Predictor, tmp_path) -> None:
    import sqlite3

    from components.prediction_log import PredictionLog

    store = tmp_path / "predictions" / "toy.sqlite"
    app = create_app(
        SwitchableLoader(LoadedModel("7", predictor, {})),
        pipeline="toy",
        poll_seconds=0,
        prediction_log=PredictionLog(store, sample_rate=1.0),
    )
    with TestClient(app) as client:
        answers = [client.post("/predict", json={"rows": ROWS}).json() for _ in range(3)]
    # Leaving the client shut the app down, which flushed the log.
    with sqlite3.connect(store) as db:
        logged = db.execute("SELECT version, input, prediction, probabilities FROM predictions ORDER BY id").fetchall()
    assert len(logged) == 3 * len(ROWS)
    assert [json.loads(r[1]) for r in logged[: len(ROWS)]] == ROWS
    assert [r[2] for r in logged[: len(ROWS)]] == answers[0]["predictions"] and {r[0] for r in logged} == {"7"}
    assert json.loads(logged[0][3]) == pytest.approx(answers[0]["probabilities"][0])

    sampled = PredictionLog(tmp_path / "sampled.sqlite", sample_rate=0.25, seed=0)
    for _ in range(100):
        sampled.record("1", ROWS, ["No"] * len(ROWS), np.zeros((len(ROWS), 2)))
    sampled.close()
    assert 60 < sampled.written < 140 and sampled.dropped == 0  # a quarter of 400

    # A store that cannot be written drops rows (counted) and never fails a request.
    (tmp_path / "blocked.sqlite").mkdir()
    broken = PredictionLog(tmp_path / "blocked.sqlite", sample_rate=1.0)
    app = create_app(
        SwitchableLoader(LoadedModel("1", predictor, {})), pipeline="toy", poll_seconds=0, prediction_log=broken
    )
    with TestClient(app) as client:
        assert all(client.post("/predict", json={"rows": ROWS}).status_code == 200 for _ in range(3))
    assert broken.written == 0 and broken.dropped == 3 * len(ROWS)


def test_openapi_follows_the_swapped_model(predictor: Predictor) -> None:
    loader = SwitchableLoader(LoadedModel("1", predictor, {}))
    app = create_app(loader, pipeline="toy", poll_seconds=0)
    with TestClient(app) as client:
        assert list(client.get("/openapi.json").json()["components"]["schemas"]["Row"]["properties"]) == [
            "age",
            "sex",
            "employed",
        ]
        torch.manual_seed(0)
        prep = TabularPreprocessor.fit(FRAME[["age", "sex"]], ["age", "sex"])
        params = {"in_features": prep.width, "n_classes": 2, "hidden": [4]}
        narrower = Predictor(build_model("mlp", **params), prep, ["No", "Yes"], "mlp", params)
        loader.model = LoadedModel("2", narrower, {})
        assert app.state.refresh() is True
        assert list(client.get("/openapi.json").json()["components"]["schemas"]["Row"]["properties"]) == ["age", "sex"]
        # The schema swapped with the model: a row with the old third column is now refused.
        response = client.post("/predict", json={"rows": ROWS})
        assert response.status_code == 422 and "unknown column 'employed'" in response.json()["detail"]


def test_fast_predict_answers_exactly_as_the_documented_route(predictor: Predictor) -> None:
    # POST /predict skips Starlette's stack (a raw handler behind the same guard); with it
    # switched off, the FastAPI route answers. Status, body, headers and metrics must agree.
    requests: list[dict[str, object]] = [
        {"json": {"rows": ROWS}},
        {"json": {"rows": ROWS[:1]}},
        {"content": b'{"rows": [', "headers": {"content-type": "application/json"}},
        {"content": b"", "headers": {"content-type": "application/json"}},
        {"content": json.dumps({"rows": ROWS}), "headers": {"content-type": "text/plain"}},
        {"content": json.dumps({"rows": ROWS}), "headers": {"content-type": "application/vnd.x+json; charset=utf-8"}},
        {"json": {"rows": [ROWS[0]] * 100}},
        {"json": {"rows": [_row(age="old")]}},
        {"json": {"rows": [{"age": 1}]}},
        {"json": {"images": [[0]]}},
        {"content": b"\xff\xfe", "headers": {"content-type": "application/json"}},
    ]
    answers, metrics = [], []
    for fast in (True, False):
        loaded = LoadedModel("3", predictor, {"alias": "champion"})
        app = create_app(SwitchableLoader(loaded), pipeline="toy", poll_seconds=0, max_body_bytes=2_000)
        if not fast:
            app.fast_predict = None  # type: ignore[attr-defined]
        with TestClient(app) as client:
            seen = []
            for request in requests:
                response = client.post("/predict", **request)  # type: ignore[arg-type]
                seen.append((response.status_code, response.content, response.headers["content-type"]))
                assert response.headers["content-length"] == str(len(response.content))
            big = client.post(
                "/predict", content=iter([b"[" + b"1," * 1500 + b"1]"]), headers={"content-type": "application/json"}
            )
            seen.append((big.status_code, big.content, big.headers["content-type"]))
            text = client.get("/metrics").text
        answers.append(seen)
        metrics.append(
            sorted(
                line
                for line in text.splitlines()
                if line.startswith(
                    ("deepgate_http_requests_total", "deepgate_http_errors_total", "deepgate_predictions_total")
                )
            )
        )
    assert answers[0] == answers[1]
    assert [status for status, _, _ in answers[0]] == [200, 200, 400, 400, 415, 200, 413, 422, 422, 422, 400, 413]
    assert metrics[0] == metrics[1] and any('status="413"' in line for line in metrics[0])
