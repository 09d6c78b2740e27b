"""The MLflow pyfunc face of a cd4ml bundle, logged as *code* (MLflow "models from code").

Logging code instead of a pickled object means loading a registered model never unpickles
anything; standard tooling (`mlflow models serve`, `mlflow.pyfunc.load_model`) still works.
"""

from pathlib import Path

import mlflow.pyfunc
import pandas as pd


class SalesForecaster(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from cd4ml.bundle import scorer

        self.scorer = scorer(Path(context.artifacts["bundle"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return pd.DataFrame({"prediction": self.scorer.predict(model_input)})


mlflow.models.set_model(SalesForecaster())
