"""Edge export: a model package's network as ONNX, ONNX Runtime inference, int8 quantization.

The ONNX graph holds the network and its softmax (features in, probabilities out). The
preprocessing (scaling, categorical encoding, image normalisation) stays the package's own
`spec.json` code, run by :class:`components.predictor.Predictor` for either backend, so the
ONNX and torch backends cannot skew from each other or from training.

Exporter: torch's TorchScript-based exporter (`dynamo=False`) with `dynamic_axes` on the batch
dimension. The torch.export-based ("dynamo") exporter, torch's default since 2.9, needs the
`onnxscript` package and brings nothing for these small static networks; the TorchScript one
works offline with only `onnx`, exports in well under a second, and matches torch to ~1e-7.
Revisit when torch drops it (it warns that it will).

Files added to a package::

    model.onnx          float32 graph, input `features` (batch, ...), output `probabilities`
    model.int8.onnx     optional: weights quantized to int8 (dynamic quantization)

Loading reads ONNX protobuf only; nothing is unpickled.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import nn

    from components.predictor import Predictor

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"
OPSET = 17
PARITY_TOLERANCE = 1e-5


class OnnxExportError(RuntimeError):
    """The network could not be exported, or the exported graph disagrees with torch."""


def _with_softmax(net: nn.Module) -> nn.Module:
    """The network followed by softmax, so the graph answers probabilities like the Predictor.

    Built on call: importing this module (for :class:`OnnxNetwork`, in the serving worker)
    must not import torch.
    """
    import torch
    from torch import nn

    class WithSoftmax(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.net = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.net(x), dim=1)

    return WithSoftmax(net)


def example_features(predictor: Predictor, n: int = 2) -> np.ndarray:
    """A batch of `n` preprocessed inputs of the right shape (values are irrelevant for export)."""
    from components.features import ImagePreprocessor

    preprocessor = predictor.preprocessor
    shape = preprocessor.shape if isinstance(preprocessor, ImagePreprocessor) else (preprocessor.width,)
    return np.random.default_rng(0).standard_normal((n, *shape)).astype(np.float32)


def export_onnx(predictor: Predictor, directory: str | os.PathLike[str], *, check: bool = True) -> Path:
    """Export the predictor's network (with softmax) to `directory/model.onnx`.

    Args:
        predictor: The model; its network is exported on CPU in eval mode.
        directory: The package folder (written by `Predictor.save`).
        check: Run the graph in ONNX Runtime on a few inputs, batch sizes 1 and 5, and raise
            unless it matches torch to within :data:`PARITY_TOLERANCE`.

    Returns:
        The path of `model.onnx`.

    Raises:
        OnnxExportError: The export failed or the graph disagrees with torch.
    """
    import torch

    Path(directory).mkdir(parents=True, exist_ok=True)
    target = Path(directory) / ONNX_FILE
    wrapped = _with_softmax(predictor.net).cpu().eval()
    sample = torch.from_numpy(example_features(predictor))
    tmp = target.with_name(target.name + ".tmp")  # written, then renamed: never a half-written model.onnx
    try:
        with warnings.catch_warnings():  # the exporter's notice that it is the legacy one
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapped,
                (sample,),
                str(tmp),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=OPSET,
            )
    except Exception as error:  # the exporter raises many types for unsupported operators
        tmp.unlink(missing_ok=True)
        raise OnnxExportError(f"arch {predictor.arch!r} could not be exported to ONNX: {error}") from error
    tmp.replace(target)
    if check:
        diff = max(parity(predictor, target, example_features(predictor, n)) for n in (1, 5))
        if diff > PARITY_TOLERANCE:
            target.unlink()
            raise OnnxExportError(f"ONNX and torch disagree by {diff:.2e} (at most {PARITY_TOLERANCE:.0e})")
    return target


class OnnxNetwork:
    """An ONNX Runtime session that maps preprocessed features to probabilities.

    Args:
        path: An ONNX file written by :func:`export_onnx` (or its quantized copy).
        threads: Intra-op threads; 0 lets ONNX Runtime choose.
    """

    def __init__(self, path: str | os.PathLike[str], threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        if threads == 1:
            # One thread: no pool whose idle threads spin-wait for the next run (they would
            # take CPU from the serving worker's own thread on a shared or pinned core).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # warnings about unused initialisers are noise here
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._run = self.session.run  # bound once: called per request
        self._outputs = [OUTPUT_NAME]

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """Probabilities, float32 (n, n_classes)."""
        features = np.ascontiguousarray(features, dtype=np.float32)
        return np.asarray(self._run(self._outputs, {INPUT_NAME: features})[0], dtype=np.float32)


def torch_probabilities(predictor: Predictor, features: np.ndarray) -> np.ndarray:
    """The torch network's probabilities for preprocessed features (whatever the backend)."""
    import torch

    with torch.inference_mode():
        logits = predictor.net.cpu()(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)))
        return torch.softmax(logits, dim=1).numpy()


def parity(predictor: Predictor, onnx_path: str | os.PathLike[str], features: np.ndarray) -> float:
    """Max absolute probability difference between torch and the ONNX graph on `features`."""
    if len(features) == 0:
        return 0.0
    onnx = OnnxNetwork(onnx_path)(features)
    return float(np.max(np.abs(onnx - torch_probabilities(predictor, features))))


@dataclass(frozen=True)
class QuantizationReport:
    """What int8 dynamic quantization changed, measured on labelled test rows.

    Attributes:
        rows: Test rows used.
        accuracy_fp32: Accuracy of `model.onnx`.
        accuracy_int8: Accuracy of `model.int8.onnx`.
        accuracy_change: int8 minus fp32 (negative: quantization cost accuracy).
        max_abs_diff: Largest probability difference int8 vs fp32.
        size_fp32: Bytes of `model.onnx`.
        size_int8: Bytes of `model.int8.onnx`.
        size_change: int8 size / fp32 size - 1 (negative: smaller).
    """

    rows: int
    accuracy_fp32: float
    accuracy_int8: float
    accuracy_change: float
    max_abs_diff: float
    size_fp32: int
    size_int8: int
    size_change: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields."""
        return asdict(self)

    def markdown(self) -> str:
        """Two-line summary for Prefect artifacts and the run log."""
        return (
            f"int8 dynamic quantization: accuracy {self.accuracy_fp32:.4f} -> {self.accuracy_int8:.4f} "
            f"({self.accuracy_change:+.4f}) on {self.rows} test rows; size {self.size_fp32:,} -> "
            f"{self.size_int8:,} bytes ({self.size_change:+.1%}); max |int8 - fp32| {self.max_abs_diff:.2e}"
        )


def quantize_int8(directory: str | os.PathLike[str], features: np.ndarray, y_true: np.ndarray) -> QuantizationReport:
    """Write `model.int8.onnx` next to `model.onnx` (int8 weights) and report what changed.

    Dynamic quantization stores MatMul/Gemm (and Conv) weights as int8 and quantizes
    activations on the fly, so it needs no calibration data.

    Args:
        directory: A package folder holding `model.onnx`.
        features: Preprocessed test inputs.
        y_true: Their class indices.

    Raises:
        OnnxExportError: `model.onnx` is missing.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = Path(directory)
    source, target = path / ONNX_FILE, path / INT8_FILE
    if not source.is_file():
        raise OnnxExportError(f"{source} does not exist: export the model first")
    with tempfile.TemporaryDirectory() as tmp:
        # Write elsewhere, then rename: a reader never sees a half-written file.
        staged = Path(tmp) / INT8_FILE
        quantize_dynamic(source, staged, weight_type=QuantType.QInt8)
        staged.replace(target)
    fp32 = OnnxNetwork(source)(features)
    int8 = OnnxNetwork(target)(features)
    y = np.asarray(y_true)
    acc32 = float(np.mean(fp32.argmax(axis=1) == y)) if len(y) else float("nan")
    acc8 = float(np.mean(int8.argmax(axis=1) == y)) if len(y) else float("nan")
    size32, size8 = source.stat().st_size, target.stat().st_size
    return QuantizationReport(
        rows=len(y),
        accuracy_fp32=acc32,
        accuracy_int8=acc8,
        accuracy_change=acc8 - acc32,
        max_abs_diff=float(np.max(np.abs(int8 - fp32))) if len(y) else 0.0,
        size_fp32=size32,
        size_int8=size8,
        size_change=size8 / size32 - 1,
    )
