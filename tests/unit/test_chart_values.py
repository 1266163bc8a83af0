"""The chart's values.yaml fits the values model that generates values.schema.json."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from routemesh_operator.api.chart import ChartValues

CHART = Path(__file__).parents[2] / "charts" / "routemesh"


def test_values_yaml_is_valid_and_equals_the_models_defaults():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    parsed = ChartValues.model_validate(values)
    # Every default is written out in values.yaml, so users see what they would change.
    assert parsed == ChartValues()
    assert parsed.model_dump(by_alias=True) == values


def test_unknown_keys_are_refused():
    with pytest.raises(ValidationError, match="replicaz"):
        ChartValues.model_validate({"operator": {"replicaz": 2}})
