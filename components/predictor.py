"""The model package: the network, its preprocessing and its labels, as one directory.

Layout (what is logged to MLflow and what the serving app loads)::

    model.safetensors   the network's state_dict (safetensors: tensors only, no pickle)
    spec.json           {"format", "modality", "arch", "arch_params", "classes",
                         "preprocessor", "positive_class", "metadata"}
    model.onnx          the network + softmax as ONNX (see components/onnx_export.py); packages
                        from before the ONNX export lack it and load with torch

Nothing in the package is ever unpickled: the network is rebuilt from `arch` and
`arch_params` with :func:`components.models.build_model`, then the weights are loaded into it;
the ONNX graph is protobuf. Either backend (ONNX Runtime or torch) runs behind the same
preprocessing code, the package's own, so serving cannot skew from training.

torch, safetensors and pandas are imported only when used: a package loaded with
`lazy_net=True` and served by ONNX Runtime never loads them (the lean serving worker of
components/serving_worker.py), and the network is built from the weights on first use of `.net`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from components.features import (
    ImagePreprocessor,
    InputError,
    Preprocessor,
    TabularPreprocessor,
    preprocessor_from_dict,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

FORMAT = "deepgate-model/1"
WEIGHTS_FILE = "model.safetensors"
SPEC_FILE = "spec.json"
BATCH_SIZE = 1024
ONNX_FILE = "model.onnx"
# Files derived from the weights: a save() over an old package removes them, as they would
# no longer match.
_DERIVED_FILES = (ONNX_FILE, "model.int8.onnx")

Backend = Literal["onnx", "torch", "auto"]


class ModelPackageError(ValueError):
    """A model directory is missing, incomplete, corrupt or inconsistent; the message says which."""


class Predictor:
    """A trained network with its preprocessing: raw inputs in, class probabilities out.

    Args:
        net: The trained network; it is put in eval mode.
        preprocessor: The preprocessing fitted on the training split.
        classes: Class labels; position i is the label of logit i.
        arch: Architecture name for :func:`build_model`.
        arch_params: The keyword arguments `net` was built with.
        metadata: Free JSON-able lineage (pipeline, data_version, ...).
        positive_class: For binary problems, the label treated as positive (may be None).
        onnx: An ONNX Runtime network (features -> probabilities) to run instead of `net`;
            `net` is still kept (saving, explanations, warm starts use it).
        net_loader: Instead of `net` (pass None): builds the network on first use of `.net`,
            so that an ONNX-served predictor never imports torch.
    """

    def __init__(
        self,
        net: nn.Module | None,
        preprocessor: Preprocessor,
        classes: Sequence[str],
        arch: str,
        arch_params: Mapping[str, Any],
        metadata: Mapping[str, Any] | None = None,
        *,
        positive_class: str | None = None,
        onnx: Callable[[np.ndarray], np.ndarray] | None = None,
        net_loader: Callable[[], nn.Module] | None = None,
    ) -> None:
        if (net is None) == (net_loader is None):
            raise ValueError("give either a network or a net_loader")
        # eval(): dropout off, BatchNorm on running stats: inference only from here.
        self._net = None if net is None else net.eval()
        self._net_loader = net_loader
        self.onnx = onnx
        self.preprocessor = preprocessor
        self.classes = [str(c) for c in classes]
        self.arch = arch
        self.arch_params = dict(arch_params)
        self.positive_class = positive_class
        self._metadata = dict(metadata or {})
        if positive_class is not None and positive_class not in self.classes:
            raise ValueError(f"positive_class {positive_class!r} is not one of the classes {self.classes}")
        n_classes = self.arch_params.get("n_classes")
        if n_classes is not None and n_classes != len(self.classes):
            raise ValueError(f"the network has {n_classes} outputs but {len(self.classes)} classes were given")

    @property
    def net(self) -> nn.Module:
        """The torch network (built from the package's weights on first use when loaded lazily)."""
        if self._net is None:
            assert self._net_loader is not None  # __init__ demands one or the other
            self._net = self._net_loader().eval()
        return self._net

    @property
    def modality(self) -> str:
        """`tabular` or `image`, from the preprocessor."""
        return "image" if isinstance(self.preprocessor, ImagePreprocessor) else "tabular"

    @property
    def backend(self) -> str:
        """`onnx` when ONNX Runtime answers, else `torch`."""
        return "torch" if self.onnx is None else "onnx"

    @property
    def metadata(self) -> dict[str, Any]:
        """A copy of the package's free metadata."""
        return dict(self._metadata)

    def input_schema(self) -> list[dict[str, Any]]:
        """What :meth:`predict_proba` expects (see the preprocessor's `input_schema`)."""
        return self.preprocessor.input_schema()

    def predict_proba(self, inputs: Any, strict: bool = True) -> np.ndarray:
        """Class probabilities for raw inputs.

        Args:
            inputs: Tabular: a DataFrame or a list of row dicts. Image: an array-like
                (n, c, h, w), or (n, h, w) for one channel.
            strict: Reject bad values instead of imputing them (see the preprocessor).

        Returns:
            float32 array (n, len(classes)); each row sums to 1.

        Raises:
            InputError: The inputs do not fit the schema.
        """
        if isinstance(self.preprocessor, TabularPreprocessor):
            pandas = sys.modules.get("pandas")  # a DataFrame can only exist once pandas is loaded
            if pandas is not None and isinstance(inputs, pandas.DataFrame):
                features = self.preprocessor.transform(inputs, strict=strict)
            elif isinstance(inputs, Sequence) and not isinstance(inputs, str):
                features = self.preprocessor.transform_records(inputs, strict=strict)
            else:
                raise InputError("tabular inputs must be a DataFrame or a list of row objects")
        else:
            features = self.preprocessor.transform(inputs, strict=strict)
        return self._forward(features)

    def predict_records(self, records: Sequence[Mapping[str, Any]], strict: bool = True) -> np.ndarray:
        """Probabilities for tabular rows given as dicts, with no DataFrame on the way (fast path)."""
        if not isinstance(self.preprocessor, TabularPreprocessor):
            raise InputError("this model takes images, not rows")
        return self._forward(self.preprocessor.transform_records(records, strict=strict))

    def predict(self, inputs: Any, strict: bool = True) -> list[str]:
        """The most probable class label of each input."""
        return self.labels(self.predict_proba(inputs, strict=strict))

    def labels(self, probabilities: np.ndarray) -> list[str]:
        """Class labels of the argmax of each probability row."""
        classes = self.classes
        return [classes[i] for i in np.asarray(probabilities).argmax(axis=1).tolist()]

    def _forward(self, features: np.ndarray) -> np.ndarray:
        if self.onnx is not None:
            if 0 < len(features) <= BATCH_SIZE:  # one batch: nothing to concatenate
                return self.onnx(features)
            batches = [self.onnx(features[i : i + BATCH_SIZE]) for i in range(0, len(features), BATCH_SIZE)]
            if not batches:
                return np.zeros((0, len(self.classes)), dtype=np.float32)
            return np.concatenate(batches).astype(np.float32, copy=False)
        import torch

        device = next(self.net.parameters()).device
        outputs = []
        # inference_mode: no autograd bookkeeping; batches bound memory on large offline calls.
        with torch.inference_mode():
            for start in range(0, len(features), BATCH_SIZE):
                batch = torch.from_numpy(features[start : start + BATCH_SIZE]).to(device)
                outputs.append(torch.softmax(self.net(batch), dim=1).cpu().numpy())
        if not outputs:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return np.concatenate(outputs).astype(np.float32, copy=False)

    def spec(self) -> dict[str, Any]:
        """The JSON description written to `spec.json`."""
        return {
            "format": FORMAT,
            "modality": self.modality,
            "arch": self.arch,
            "arch_params": self.arch_params,
            "classes": self.classes,
            "preprocessor": self.preprocessor.to_dict(),
            "positive_class": self.positive_class,
            "metadata": self._metadata,
        }

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the package into `directory` (created if needed) and return its path."""
        from safetensors.torch import save_file

        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        # allow_nan=False: a NaN statistic would make spec.json unreadable by strict JSON parsers.
        spec_text = json.dumps(self.spec(), indent=2, sort_keys=True, allow_nan=False)
        # safetensors wants contiguous CPU tensors that share no storage.
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.net.state_dict().items()}
        # Write then rename, so that a reader never sees a half-written file.
        _atomic_write(path / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
        _atomic_write(path / SPEC_FILE, lambda tmp: tmp.write_text(spec_text + "\n", encoding="utf-8"))
        for name in _DERIVED_FILES:
            (path / name).unlink(missing_ok=True)
        return path

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        backend: Backend = "auto",
        *,
        lazy_net: bool = False,
        onnx_threads: int = 0,
    ) -> Predictor:
        """Read a package written by :meth:`save`, on CPU, in eval mode.

        Args:
            directory: The package folder.
            backend: `onnx` runs `model.onnx` in ONNX Runtime (it must exist), `torch` runs
                the safetensors weights, `auto` takes ONNX Runtime when `model.onnx` exists.
            lazy_net: When ONNX Runtime answers, leave the torch network unbuilt until `.net`
                is used (then a bad weights file raises there): the serving worker never
                imports torch. Ignored when torch answers.
            onnx_threads: ONNX Runtime's intra-op threads; 0 lets it choose (one per core).

        Raises:
            ModelPackageError: A file is missing or corrupt, the format is unknown, or the
                weights do not fit the architecture.
        """
        path = Path(directory)
        spec = _read_spec(path)
        try:
            preprocessor = preprocessor_from_dict(spec["preprocessor"])
        except (KeyError, TypeError, ValueError) as error:
            raise ModelPackageError(f"{path / SPEC_FILE} describes an invalid model: {error}") from None
        net = None if lazy_net else _build_net(path, spec)
        onnx = _onnx_network(path, backend, onnx_threads)
        net_loader = None
        if net is None:
            if onnx is None:  # torch answers: it needs the network now
                net = _build_net(path, spec)
            elif not (path / WEIGHTS_FILE).is_file():  # the package must be whole even if ONNX answers
                raise ModelPackageError(f"incomplete model package: {path / WEIGHTS_FILE} does not exist")
            else:
                net_loader = lambda: _build_net(path, spec)  # noqa: E731
        try:
            return cls(
                net,
                preprocessor,
                spec["classes"],
                spec["arch"],
                spec["arch_params"],
                spec.get("metadata"),
                positive_class=spec.get("positive_class"),
                onnx=onnx,
                net_loader=net_loader,
            )
        except ValueError as error:
            raise ModelPackageError(f"{path / SPEC_FILE} is inconsistent: {error}") from None


def _build_net(path: Path, spec: Mapping[str, Any]) -> nn.Module:
    """The torch network of a package: built from `arch`, weights loaded from safetensors."""
    from components.models import build_model

    try:
        net = build_model(spec["arch"], **spec["arch_params"])
    except (KeyError, TypeError, ValueError) as error:
        raise ModelPackageError(f"{path / SPEC_FILE} describes an invalid model: {error}") from None
    try:
        net.load_state_dict(_read_weights(path), strict=True)
    except RuntimeError as error:  # missing, unexpected or mis-shaped tensors
        raise ModelPackageError(f"{path / WEIGHTS_FILE} does not fit arch {spec['arch']!r}: {error}") from None
    return net


def _onnx_network(path: Path, backend: str, threads: int = 0) -> Callable[[np.ndarray], np.ndarray] | None:
    """The ONNX Runtime network for `backend`, or None for torch."""
    if backend not in ("onnx", "torch", "auto"):
        raise ValueError(f"unknown backend {backend!r}; use onnx, torch or auto")
    onnx_path = path / ONNX_FILE
    if backend == "torch" or (backend == "auto" and not onnx_path.is_file()):
        return None
    if not onnx_path.is_file():
        raise ModelPackageError(f"backend 'onnx' asked for, but {onnx_path} does not exist")
    from components.onnx_export import OnnxNetwork

    try:
        return OnnxNetwork(onnx_path, threads=threads)
    except Exception as error:  # onnxruntime raises its own error types for bad graphs
        raise ModelPackageError(f"{onnx_path} is corrupt or not an ONNX model: {error}") from None


def _atomic_write(target: Path, write: Callable[[Path], object]) -> None:
    tmp = target.with_name(target.name + ".tmp")
    write(tmp)
    tmp.replace(target)


def _read_spec(path: Path) -> dict[str, Any]:
    spec_path = path / SPEC_FILE
    if not spec_path.is_file():
        raise ModelPackageError(f"not a model package: {spec_path} does not exist")
    try:
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelPackageError(f"{spec_path} is not valid JSON: {error}") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        found = spec.get("format") if isinstance(spec, dict) else None
        raise ModelPackageError(f"{spec_path}: unknown package format {found!r}; expected {FORMAT!r}")
    missing = [k for k in ("arch", "arch_params", "classes", "preprocessor") if k not in spec]
    if missing:
        raise ModelPackageError(f"{spec_path} lacks the key(s) {missing}")
    return spec


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise ModelPackageError(f"incomplete model package: {weights_path} does not exist")
    try:
        return load_file(str(weights_path), device="cpu")
    except Exception as error:  # safetensors raises its own error type, or OSError, for bad files
        raise ModelPackageError(f"{weights_path} is corrupt or not a safetensors file: {error}") from None
