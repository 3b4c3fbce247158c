"""ONNX export: torch/ONNX parity on tabular and image models, backends, int8 quantization report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch

from components.features import ImagePreprocessor, TabularPreprocessor
from components.models import build_model
from components.onnx_export import INT8_FILE, ONNX_FILE, export_onnx, quantize_int8
from components.predictor import ModelPackageError, Predictor

rng = np.random.default_rng(0)
FRAME = pd.DataFrame(
    {
        "age": rng.integers(18, 80, size=60),
        "sex": rng.choice(["Male", "Female"], size=60),
        "employed": rng.choice([True, False], size=60),
    }
)
IMAGES = rng.integers(0, 256, size=(40, 12, 12), dtype=np.uint8)


def tabular_predictor(hidden: tuple[int, ...] = (16, 8)) -> Predictor:
    torch.manual_seed(0)
    prep = TabularPreprocessor.fit(FRAME, ["age", "sex", "employed"])
    params = {"in_features": prep.width, "n_classes": 2, "hidden": list(hidden), "dropout": 0.5}
    return Predictor(build_model("mlp", **params), prep, ["No", "Yes"], "mlp", params)


def image_predictor() -> Predictor:
    torch.manual_seed(0)
    prep = ImagePreprocessor.fit(IMAGES)
    params = {"in_channels": 1, "height": 12, "width": 12, "n_classes": 3, "channels": [4, 8], "dropout": 0.25}
    net = build_model("cnn", **params)
    net.train()  # non-trivial BatchNorm statistics, which the graph must fold in correctly
    with torch.no_grad():
        net(torch.from_numpy(prep.transform(IMAGES)))
    return Predictor(net, prep, ["0", "1", "2"], "cnn", params)


@pytest.mark.parametrize(("make", "inputs"), [(tabular_predictor, FRAME), (image_predictor, IMAGES)])
def test_onnx_backend_matches_torch(tmp_path: Path, make, inputs) -> None:
    predictor = make()
    package = predictor.save(tmp_path / "model")
    export_onnx(predictor, package)
    model = onnx.load(str(package / ONNX_FILE))
    onnx.checker.check_model(model)
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch"  # dynamic batch: any batch size runs

    torch_backend = Predictor.load(package, backend="torch")
    onnx_backend = Predictor.load(package, backend="onnx")
    auto = Predictor.load(package)
    assert (torch_backend.backend, onnx_backend.backend, auto.backend) == ("torch", "onnx", "onnx")
    expected = torch_backend.predict_proba(inputs)
    for n in (1, 7, len(expected)):  # several batch sizes through the one graph
        got = onnx_backend.predict_proba(inputs[:n])
        assert got.dtype == np.float32 and got.shape == expected[:n].shape
        assert np.max(np.abs(got - expected[:n])) <= 1e-5
    assert np.array_equal(expected, predictor.predict_proba(inputs))


def test_package_without_onnx_loads_with_torch(tmp_path: Path) -> None:
    predictor = tabular_predictor()
    package = predictor.save(tmp_path / "model")
    assert Predictor.load(package).backend == "torch"  # auto: an old package still loads
    with pytest.raises(ModelPackageError, match="does not exist"):
        Predictor.load(package, backend="onnx")


def test_resaving_drops_a_stale_onnx_file(tmp_path: Path) -> None:
    predictor = tabular_predictor()
    package = predictor.save(tmp_path / "model")
    export_onnx(predictor, package)
    predictor.save(package)  # new weights would no longer match the old graph
    assert not (package / ONNX_FILE).exists()


def test_tampered_onnx_file_fails_clearly(tmp_path: Path) -> None:
    predictor = tabular_predictor()
    package = predictor.save(tmp_path / "model")
    export_onnx(predictor, package)
    (package / ONNX_FILE).write_bytes(b"\x08\x07not a graph")
    with pytest.raises(ModelPackageError, match=r"model\.onnx is corrupt"):
        Predictor.load(package, backend="onnx")


def test_int8_quantization_reports_accuracy_and_size(tmp_path: Path) -> None:
    # Wide enough that the weights, not the graph's fixed overhead, make up the file.
    predictor = tabular_predictor(hidden=(256, 128))
    package = predictor.save(tmp_path / "model")
    export_onnx(predictor, package)
    features = predictor.preprocessor.transform(FRAME)
    y_true = predictor.predict_proba(FRAME).argmax(axis=1)  # labels = fp32 answers: accuracy_fp32 is 1
    report = quantize_int8(package, features, y_true)
    assert (package / INT8_FILE).is_file()
    assert report.rows == len(FRAME)
    assert report.accuracy_fp32 == 1.0
    assert 0.0 <= report.accuracy_int8 <= 1.0
    assert report.accuracy_change == pytest.approx(report.accuracy_int8 - report.accuracy_fp32)
    assert report.size_int8 < 0.5 * report.size_fp32 and -1 < report.size_change < -0.5  # int8 weights: ~1/4
    assert report.size_change == pytest.approx(report.size_int8 / report.size_fp32 - 1)
    assert report.max_abs_diff < 0.5
    assert "accuracy" in report.markdown() and set(report.to_dict()) >= {"accuracy_change", "size_change"}
