"""`--set` overrides: written into params.yaml with comments, parsed as YAML, type-checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cd4ml.cli import app
from cd4ml.config import ConfigError, apply_overrides, init_project, load_params


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    init_project(tmp_path)
    return tmp_path / "params.yaml"


def test_overrides_are_written_into_params_yaml_keeping_comments(params_file: Path) -> None:
    before = params_file.read_text()
    applied = apply_overrides(params_file, ["split.horizon=8", "model.lightgbm.num_leaves=15"])

    after = params_file.read_text()
    assert applied == [("split.horizon", 8), ("model.lightgbm.num_leaves", 15)]
    assert load_params(params_file).split.horizon == 8
    assert load_params(params_file).model.lightgbm["num_leaves"] == 15
    comments = [line[line.index("#") :] for line in before.splitlines() if "#" in line]
    assert comments and all(comment in after for comment in comments)
    assert "horizon: 8 " in after  # edited in place, its comment still beside it
    assert len(after.splitlines()) == len(before.splitlines())


def test_values_are_parsed_as_yaml(params_file: Path) -> None:
    apply_overrides(
        params_file,
        [
            "features.windows=[7, 28]",
            "data.sample.items=20",
            "tracking.experiment=trial 2",
            "model.random_forest.max_features=0.3",
        ],
    )
    raw = yaml.safe_load(params_file.read_text())
    assert raw["features"]["windows"] == [7, 28]
    assert raw["data"]["sample"]["items"] == 20
    assert raw["tracking"]["experiment"] == "trial 2"
    assert raw["model"]["random_forest"]["max_features"] == 0.3


def test_a_new_hyperparameter_may_be_added_to_a_model_family(params_file: Path) -> None:
    apply_overrides(params_file, ["model.lightgbm.max_depth=6"])
    assert load_params(params_file).model.lightgbm["max_depth"] == 6


@pytest.mark.parametrize("key", ["split.horizn", "spilt.horizon", "data.sample.shops", "model.xgboost"])
def test_unknown_key_is_a_config_error_naming_it(params_file: Path, key: str) -> None:
    before = params_file.read_text()
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        apply_overrides(params_file, [f"{key}=3"])
    assert params_file.read_text() == before


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("split.horizon=abc", "split.horizon"),
        ("model.type=xgboost", "model.type"),
        ("split.horizon=0", "split.horizon"),
        ("features.windows=7", "features.windows"),
        ("data.sample.start=someday", "data.sample.start"),
    ],
)
def test_wrong_type_is_a_config_error_and_nothing_is_written(params_file: Path, override: str, key: str) -> None:
    before = params_file.read_text()
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        apply_overrides(params_file, ["split.horizon=8", override])
    assert params_file.read_text() == before


def test_override_without_a_value_is_a_config_error(params_file: Path) -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides(params_file, ["split.horizon"])


def test_cli_reports_a_bad_override_and_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "--workdir", str(tmp_path), "--set", "model.type=xgboost"])
    assert result.exit_code == 2
    assert "model.type" in result.output
    assert not (tmp_path / ".dvc").exists()  # refused before DVC or any stage ran
