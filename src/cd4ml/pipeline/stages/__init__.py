"""Stage entry points that dvc.yaml calls: read inputs, call plain functions, write outputs.

Every stage runs in the work directory (the folder holding dvc.yaml) and returns a one-line
summary for the run's table. Data stages, model stages and release stages live in their own
modules; this one names them in pipeline order.
"""

from __future__ import annotations

from cd4ml.pipeline.stages.backtest import backtest
from cd4ml.pipeline.stages.data import featurize, ingest, split, validate
from cd4ml.pipeline.stages.model import evaluate, train
from cd4ml.pipeline.stages.release import gate, register
from cd4ml.pipeline.stages.workdir import feature_spec, load_part

STAGES = {
    "ingest": ingest,
    "validate": validate,
    "split": split,
    "featurize": featurize,
    "train": train,
    "evaluate": evaluate,
    "backtest": backtest,
    "gate": gate,
    "register": register,
}

__all__ = ["STAGES", "feature_spec", "load_part"]
