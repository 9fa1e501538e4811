"""MLflow models-from-code entry: an mlscale bundle as a pyfunc model, loaded without unpickling anything.

MLflow copies this file into the logged model and runs it on load; it only imports mlscale (which travels with the
model as code) and reads the bundle: no Ray, no pickles.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from mlscale.registry.bundle import Bundle


class BundleModel(PythonModel):
    """pyfunc predict(DataFrame of raw records) -> one prediction per row (a probability, or the label's value)."""

    def load_context(self, context: Any) -> None:
        self.bundle = Bundle.load(context.artifacts["bundle"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.Series:
        rows = len(model_input)  # an optional column may be left out of a request: all missing
        columns = {name: model_input[name].to_numpy() if name in model_input else [None] * rows
                   for name in self.bundle.input_columns}
        return pd.Series(self.bundle.predict_columns(columns), name="probability")


mlflow.models.set_model(BundleModel())
