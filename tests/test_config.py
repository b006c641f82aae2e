"""The one configuration mechanism: declared types, ranges, choices and constraints, checked on construction."""

from __future__ import annotations

import math
from typing import Annotated, Literal

import pytest

from mirrorgrad_jax.config import (
    Constraint,
    Fraction,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    check_config,
    config_class,
    load_yaml,
)
from mirrorgrad_jax.errors import ConfigError, UserInputError
from mirrorgrad_jax.train import MGConfig, TrainConfig


@config_class
class Example:
    """A config declaring one field of every kind the mechanism knows."""

    size: PositiveInt = 4
    layers: NonNegativeInt = 0
    rate: PositiveFloat = 1e-3
    dropout: Fraction = 0.1
    mode: Literal["fast", "exact"] = "fast"
    flag: bool = False
    name: str = "x"
    schedule: tuple[PositiveFloat, PositiveFloat] = (1.0, 50.0)
    cutoffs: tuple[PositiveInt, ...] = (5, 10)
    budget: PositiveFloat | None = None
    odd: Annotated[int, Range(ge=3, lt=9)] = 3

    constraints = (Constraint(("size", "layers"), lambda c: c.layers <= c.size, "must satisfy layers <= size"),)

    def __post_init__(self):
        object.__setattr__(self, "name", self.name.lower())


@pytest.mark.parametrize(
    "rng, text",
    [
        (Range(ge=1), ">= 1"),
        (Range(gt=0), "> 0"),
        (Range(ge=0, lt=1), "in [0, 1)"),
        (Range(ge=0, le=1), "in [0, 1]"),
        (Range(gt=0, le=2.5), "in (0, 2.5]"),
        (Range(le=3), "<= 3"),
        (Range(ge=1, lt=2**31), "in [1, 2**31)"),  # a power-of-two int bound as a power, not 2.14748e+09
        (Range(), "finite"),
    ],
)
def test_range_says_what_it_allows(rng, text):
    assert rng.describe() == text


def test_a_range_refuses_non_finite_values_and_its_bounds():
    assert Range(ge=0).contains(0.0) and not Range(gt=0).contains(0.0)
    assert not Range(ge=0).contains(math.nan) and not Range(ge=0).contains(math.inf)
    assert Range(ge=0, lt=1).contains(0.999) and not Range(ge=0, lt=1).contains(1.0)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"size": 0}, r"Example\.size must be an integer in \[1, 2\*\*31\), got 0 \(int\)"),
        ({"size": 2.5}, r"Example\.size must be an integer in \[1, 2\*\*31\), got 2\.5"),
        ({"size": True}, r"Example\.size must be an integer in \[1, 2\*\*31\), got True"),
        ({"rate": 0.0}, r"Example\.rate must be a finite number > 0, got 0\.0"),
        ({"rate": math.nan}, r"Example\.rate must be a finite number > 0, got nan"),
        ({"rate": "1e-4"}, r"Example\.rate .* got '1e-4' \(str\) \(a number written as text: write it without quotes\)"),
        ({"dropout": 1.0}, r"Example\.dropout must be a finite number in \[0, 1\), got 1\.0"),
        ({"mode": "slow"}, r"Example\.mode must be one of 'fast', 'exact', got 'slow'"),
        ({"flag": "False"}, r"Example\.flag must be true or false, got 'False'"),
        ({"flag": 1}, r"Example\.flag must be true or false, got 1"),
        ({"name": 3}, r"Example\.name must be a string, got 3"),
        ({"schedule": [0.96, -1]}, r"Example\.schedule must be a list of 2 values \(a finite number > 0, a finite number > 0\)"),
        ({"schedule": [0.96]}, r"Example\.schedule must be a list of 2 values"),
        ({"cutoffs": [5, 0]}, r"Example\.cutoffs must be a list of an integer in \[1, 2\*\*31\)"),
        ({"budget": -1.0}, r"Example\.budget must be a finite number > 0 or null, got -1\.0"),
        ({"odd": 9}, r"Example\.odd must be an integer in \[3, 9\), got 9"),
        ({"size": 2, "layers": 3}, r"Example\.size and layers must satisfy layers <= size, got size=2, layers=3"),
    ],
)
def test_a_value_the_declaration_refuses_names_field_value_and_what_is_allowed(values, message):
    with pytest.raises(ConfigError, match=message):
        Example(**values)


def test_lossless_conversions_are_applied_and_post_init_normalises_after_the_check():
    cfg = Example(size=4.0, rate=1, schedule=[0.5, 10], cutoffs=[1, 2], budget=3, name="MiXed")
    assert (cfg.size, cfg.rate, cfg.schedule, cfg.cutoffs, cfg.budget, cfg.name) == (4, 1.0, (0.5, 10.0), (1, 2), 3.0, "mixed")
    assert type(cfg.size) is int and type(cfg.rate) is float
    with pytest.raises(AttributeError):  # frozen
        cfg.size = 5  # type: ignore[misc]


def test_constraints_are_a_declaration_not_a_field_and_config_errors_are_user_input_errors():
    assert "constraints" not in Example.__dataclass_fields__
    with pytest.raises(UserInputError):
        Example(size=0)
    check_config(Example())  # the check can be run again on a built config


def test_mg_config_knows_which_of_its_fields_cannot_change_a_run():
    assert MGConfig().inert_fields() == ()
    assert set(MGConfig(enabled=False).inert_fields()) == {"alpha1", "alpha2", "beta", "apply_to", "schedule"}
    MGConfig(enabled=False, alpha2=2.0)  # the alpha condition binds only with MG on
    with pytest.raises(ConfigError, match=r"MGConfig\.alpha1 and alpha2 must satisfy alpha1 > alpha2 > 0"):
        MGConfig(alpha2=1.0)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"valid_metric": "recall@7"}, r"TrainConfig\.valid_metric and topk must name a metric"),
        ({"valid_metric": "hits@5"}, r"TrainConfig\.valid_metric and topk"),
        ({"topk": []}, r"TrainConfig\.topk must hold at least one cutoff"),
        ({"optimizer": "lion"}, r"TrainConfig\.optimizer must be one of 'adam', 'sgd', 'adagrad', 'rmsprop'"),
        ({"device_budget_mb": 0}, r"TrainConfig\.device_budget_mb must be a finite number > 0 or null"),
    ],
)
def test_train_config_declarations(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**values)
    assert TrainConfig(valid_metric="Recall@20").valid_metric == "recall@20"


@pytest.mark.parametrize("text, value", [("1e-4", 1e-4), ("1E5", 1e5), (".5", 0.5), ("+3.", 3.0), ("7", 7), ("true", True)])
def test_yaml_reads_numbers_as_people_write_them(text, value):
    loaded = load_yaml(f"x: {text}")["x"]
    assert loaded == value and type(loaded) is type(value)


@pytest.mark.parametrize(
    "rows, batch, batches",
    [(0, 4, 0), (1, 4, 1), (8, 4, 2), (9, 4, 3), (2048, 2048, 1), (2049, 2048, 2)],
)
def test_steps_per_epoch_keeps_the_last_smaller_batch(rows, batches, batch):
    # Counted by hand: full batches plus one for any remainder.
    assert TrainConfig(batch_size=batch).steps_per_epoch(rows) == batches


def test_steps_per_epoch_refuses_a_negative_row_count():
    with pytest.raises(ValueError, match="num_train must be >= 0"):
        TrainConfig().steps_per_epoch(-1)
