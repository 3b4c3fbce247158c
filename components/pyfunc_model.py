"""MLflow pyfunc wrapper of a deepgate model package, saved as code (models-from-code).

MLflow loads this file as a script; it wraps :class:`components.predictor.Predictor`, so that
`mlflow.pyfunc.load_model("models:/deepgate-NAME@champion")` and `mlflow models serve` work on
the same safetensors weights and preprocessing that `deepgate serve` uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

import mlflow


class DeepgatePyfunc(PythonModel):
    """Class probabilities for rows (DataFrame) or images (array), one column per class."""

    # Inputs are validated by the package's own preprocessing; MLflow's type-hint schema
    # inference cannot describe them and only warns.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        """Load the package (safetensors weights + spec.json) named `package`."""
        from components.predictor import Predictor

        self.predictor = Predictor.load(Path(context.artifacts["package"]))

    # No type hints here: MLflow would try (and fail) to infer an input schema from them.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        """Probabilities per class; images may come as an array or a column of nested lists."""
        if self.predictor.modality == "image" and isinstance(model_input, pd.DataFrame):
            model_input = np.asarray(model_input.iloc[:, 0].tolist(), dtype=np.float32)
        proba = self.predictor.predict_proba(model_input, strict=False)
        return pd.DataFrame(proba, columns=[str(c) for c in self.predictor.classes])


mlflow.models.set_model(DeepgatePyfunc())
