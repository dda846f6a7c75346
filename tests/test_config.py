"""Configuration: YAML recipes, dotted overrides, presets, type coercion, errors that name file/line/field."""

import textwrap

import pytest

from picolm.config import (
    PRESETS,
    SECTIONS,
    Config,
    ModelConfig,
    SamplingOptions,
    build_config,
    config_from_dict,
    load_config,
    range_checks,
    real,
    save_config,
    whole,
)
from picolm.errors import PicolmError


def write_recipe(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def recipe_error(tmp_path, text: str) -> tuple[str, str]:
    """(message, path) of the PicolmError that building a config from this recipe raises."""
    path = write_recipe(tmp_path, text)
    with pytest.raises(PicolmError) as excinfo:
        build_config(path)
    return str(excinfo.value), str(path)


# ---------------------------------------------------------------- recipes and overrides


def test_recipe_values_are_applied_and_the_rest_keeps_defaults(tmp_path):
    path = write_recipe(tmp_path, """
        # a comment
        model:
          n_layer: 2
          position: rope
        train:
          lr: 0.01
          compile: true
        log:
          backends: [tensorboard]
    """)
    config = build_config(path)
    assert (config.model.n_layer, config.model.position) == (2, "rope")
    assert config.train.lr == 0.01 and config.train.compile is True
    assert config.log.backends == ["tensorboard"]
    defaults = Config()
    assert config.model.n_head == defaults.model.n_head
    assert config.train.batch_size == defaults.train.batch_size


def test_override_beats_recipe(tmp_path):
    path = write_recipe(tmp_path, """
        model:
          n_layer: 2
        train:
          lr: 0.01
    """)
    config = build_config(path, {"train.lr": "1e-3", "model.n_layer": "6"})
    assert config.train.lr == pytest.approx(0.001)
    assert config.model.n_layer == 6


def test_preset_expands_and_override_keys_win(tmp_path):
    path = write_recipe(tmp_path, """
        model:
          preset: small
    """)
    config = build_config(path, {"model.n_layer": "3"})
    assert config.model.n_layer == 3
    small = PRESETS["small"]
    assert (config.model.n_head, config.model.n_embd, config.model.block_size) == (
        small["n_head"], small["n_embd"], small["block_size"])


@pytest.mark.parametrize("order", ["preset_first", "preset_last"])
def test_explicit_recipe_key_wins_over_preset_wherever_it_is_written(tmp_path, order):
    lines = ["  preset: gpt2", "  n_layer: 2"]
    if order == "preset_last":
        lines.reverse()
    path = write_recipe(tmp_path, "model:\n" + "\n".join(lines) + "\n")
    config = build_config(path)
    assert config.model.n_layer == 2
    assert config.model.vocab_size == PRESETS["gpt2"]["vocab_size"]


def test_unknown_preset_is_refused(tmp_path):
    with pytest.raises(PicolmError, match=r"model\.preset: unknown preset 'huge'"):
        build_config(None, {"model.preset": "huge"})


@pytest.mark.parametrize(("overrides", "section", "name", "expected"), [
    ({"train.lr": "1e-3"}, "train", "lr", 0.001),
    ({"train.lr": "3"}, "train", "lr", 3.0),
    ({"model.dropout": "0.25"}, "model", "dropout", 0.25),
    ({"model.n_layer": "6"}, "model", "n_layer", 6),
    ({"model.n_layer": 6.0}, "model", "n_layer", 6),
    ({"train.compile": "true"}, "train", "compile", True),
    ({"train.compile": "TRUE"}, "train", "compile", True),
    ({"train.compile": "off"}, "train", "compile", False),
    ({"model.bias": "no"}, "model", "bias", False),
    ({"train.micro_batch_size": "none"}, "train", "micro_batch_size", None),
    ({"train.micro_batch_size": "8"}, "train", "micro_batch_size", 8),
    ({"train.warmup_steps": "null"}, "train", "warmup_steps", None),
    ({"train.max_steps": "None", "train.epochs": "2"}, "train", "max_steps", None),
    ({"log.run_name": "none"}, "log", "run_name", None),
    ({"log.run_name": "exp-1"}, "log", "run_name", "exp-1"),
    ({"log.backends": "tensorboard,wandb"}, "log", "backends", ["tensorboard", "wandb"]),
    ({"log.backends": "wandb"}, "log", "backends", ["wandb"]),
    ({"log.backends": ""}, "log", "backends", []),
    ({"data.path": "none"}, "data", "path", "none"),  # a str field is not optional: "none" is a name
])
def test_override_values_are_coerced_to_the_field_type(overrides, section, name, expected):
    value = getattr(getattr(build_config(None, overrides), section), name)
    assert value == expected
    assert type(value) is type(expected)


def test_recipe_values_are_coerced_like_overrides(tmp_path):
    path = write_recipe(tmp_path, """
        train:
          lr: 1e-3
          micro_batch_size: none
        log:
          backends: tensorboard,wandb
          run_name: null
    """)
    config = build_config(path)
    assert config.train.lr == pytest.approx(0.001) and isinstance(config.train.lr, float)
    assert config.train.micro_batch_size is None
    assert config.log.backends == ["tensorboard", "wandb"]
    assert config.log.run_name is None


@pytest.mark.parametrize(("key", "value", "message"), [
    ("model.n_layer", "four", r"model\.n_layer: expected int, got 'four'"),
    ("model.n_layer", "2.5", r"model\.n_layer: expected int, got '2\.5'"),
    ("model.n_layer", True, r"model\.n_layer: expected int, got True"),
    ("train.lr", "fast", r"train\.lr: expected float, got 'fast'"),
    ("train.compile", "maybe", r"train\.compile: expected bool, got 'maybe'"),
    ("model.n_layer", None, r"model\.n_layer: may not be empty"),
    ("model.n_layer", "none", r"model\.n_layer: expected int, got 'none'"),  # "none" only empties optionals
    ("model.bogus", "1", r"model\.bogus: unknown field; model has: arch, n_layer"),
    ("modle.n_layer", "1", r"modle\.n_layer: unknown setting \(sections: model, data, train, objective, log, lora\)"),
    ("model", "1", r"model: unknown setting"),
    ("log.backends", "tensorboard,mlflow", r"log\.backends: unknown backend 'mlflow'"),
])
def test_bad_override_names_the_field(key, value, message):
    with pytest.raises(PicolmError, match=message):
        build_config(None, {key: value})


# ---------------------------------------------------------------- recipe errors: file, line, field

@pytest.mark.parametrize(("text", "line", "field", "why"), [
    pytest.param("""
        # model shape
        model:
          n_layer: 2

        train:
          lr: 0.01
          bogus_field: 3
    """, 7, "train.bogus_field", "unknown field", id="unknown-field"),
    pytest.param("""
        model:
          n_layer: 2
          n_head: four
    """, 3, "model.n_head", "expected int, got 'four'", id="wrong-type"),
    pytest.param("""
        train:
          lr: 0.01
          compile: perhaps
    """, 3, "train.compile", "expected bool, got 'perhaps'", id="wrong-bool"),
    pytest.param("""
        model:
          n_layer: 2
        trian:
          lr: 0.01
    """, 4, "trian.lr", "unknown setting (sections: model, data, train, objective, log, lora)", id="unknown-section"),
    pytest.param("""
        model:
          n_layer: 2
        train: 5
    """, 3, "train", "expected a mapping of fields", id="section-not-a-mapping"),
    pytest.param("""
        log:
          backends: [tensorboard]
        model:
          preset: enormous
    """, 4, "model.preset", "unknown preset 'enormous'", id="unknown-preset"),
])
def test_recipe_error_names_file_line_and_field(tmp_path, text, line, field, why):
    message, path = recipe_error(tmp_path, text)
    assert message.startswith(f"{path}:{line}: {field}: ")
    assert why in message
    assert "\n" not in message


@pytest.mark.parametrize(("text", "line"), [
    ("model:\n  n_layer: 2\n  n_head: 4: 5\n", 3),
    ("model:\n  n_layer: 2\n\tn_head: 3\n", 3),
    ("model:\n  n_layer: 2\n  n_head: [4, 8\ntrain:\n  lr: 0.1\n", 4),
])
def test_invalid_yaml_names_file_and_line(tmp_path, text, line):
    message, path = recipe_error(tmp_path, text)
    assert message.startswith(f"{path}:{line}: not valid YAML")
    assert "\n" not in message


def test_recipe_that_is_not_a_mapping_is_refused(tmp_path):
    message, path = recipe_error(tmp_path, "- model\n- train\n")
    assert message.startswith(f"{path}:1: ")


def test_missing_recipe_names_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PicolmError, match="recipe not found") as excinfo:
        build_config(missing)
    assert str(missing) in str(excinfo.value)


def test_empty_recipe_gives_defaults(tmp_path):
    assert build_config(write_recipe(tmp_path, "# nothing yet\n")) == Config()


def test_empty_value_means_none_for_an_optional_field(tmp_path):
    path = write_recipe(tmp_path, """
        log:
          run_name:
    """)
    assert build_config(path).log.run_name is None


def test_empty_value_for_a_required_field_names_file_line_and_field(tmp_path):
    message, path = recipe_error(tmp_path, """
        model:
          n_layer: 2
          n_head:
    """)
    assert message.startswith(f"{path}:3: model.n_head: ")


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(("changes", "field", "why"), [
    ({"n_embd": 130, "n_head": 4}, "model.n_embd", "130 is not divisible by n_head=4"),
    ({"position": "alibi"}, "model.position", "must be one of learned, rope, none"),
    ({"attention": "quadratic"}, "model.attention", "must be one of softmax, linear"),
    ({"mlp": "relu"}, "model.mlp", "must be one of gelu, swiglu"),
    ({"dropout": 1.0}, "model.dropout", "must be in [0, 1) (got 1.0)"),
    ({"n_layer": 0}, "model.n_layer", "must be at least 1 (got 0)"),
    ({"n_head": 0}, "model.n_head", "must be at least 1 (got 0)"),  # checked before n_embd % n_head divides by it
    ({"n_embd": 10**9}, "model.n_embd", "must be at most 65536 (got 1000000000)"),
    ({"dropout": float("nan")}, "model.dropout", "must be in [0, 1) (got nan)"),
    ({"rope_base": 1.0}, "model.rope_base", "must be in (1, 1e12] (got 1.0)"),
    ({"position": "rope", "n_embd": 12, "n_head": 4}, "model.n_embd", "RoPE needs an even head size"),
])
def test_model_validate_refuses_bad_shapes(changes, field, why):
    with pytest.raises(PicolmError) as excinfo:
        ModelConfig(**changes).validate()
    assert str(excinfo.value) == f"{field}: {why}"


@pytest.mark.parametrize("changes", [{}, {"position": "rope"}, {"position": "none", "mlp": "swiglu"},
                                     {"n_embd": 96, "n_head": 6}])
def test_model_validate_accepts_good_shapes(changes):
    ModelConfig(**changes).validate()


def test_build_config_validates(tmp_path):
    path = write_recipe(tmp_path, """
        model:
          n_embd: 100
          n_head: 3
    """)
    with pytest.raises(PicolmError, match=r"model\.n_embd: 100 is not divisible by n_head=3"):
        build_config(path)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_is_valid(preset):
    config = build_config(None, {"model.preset": preset})
    for name, value in PRESETS[preset].items():
        assert getattr(config.model, name) == value


# ---------------------------------------------------------------- round trips


def busy_config() -> Config:
    """A config far from the defaults in every section."""
    return build_config(None, {
        "model.preset": "small", "model.position": "rope", "model.dropout": "0.1", "model.mlp": "swiglu",
        "data.path": "data/numeric", "train.max_steps": "none", "train.epochs": "1.5", "train.lr": "3e-4",
        "train.micro_batch_size": "4", "train.compile": "yes", "log.backends": "tensorboard,wandb",
        "log.run_name": "busy",
    })


def test_config_from_dict_round_trips():
    config = busy_config()
    assert config != Config()
    rebuilt = config_from_dict(config.to_dict())
    assert rebuilt == config
    assert rebuilt.to_dict() == config.to_dict()


def test_save_and_load_config_round_trip(tmp_path):
    config = busy_config()
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


def test_saved_config_is_a_valid_recipe(tmp_path):
    config = busy_config()
    save_config(config, tmp_path / "config.yaml")
    assert build_config(tmp_path / "config.yaml") == config


def test_load_config_refuses_a_foreign_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("model: [1, 2]\n", encoding="utf-8")
    with pytest.raises(PicolmError, match="not a picolm config") as excinfo:
        load_config(path)
    assert str(path) in str(excinfo.value)


# ---------------------------------------------------------------- ranges


@pytest.mark.parametrize(("within", "value", "why"), [
    (whole(1, 10), 1, None),
    (whole(1, 10), 0, "must be at least 1"),
    (whole(1, 10), 11, "must be at most 10"),
    (whole(1, 10), 2.0, "must be a whole number"),
    (whole(1, 10), True, "must be a whole number"),
    (whole(2, 10, "samples"), 1, "needs at least 2 samples"),
    (real(0, 1, below=True), 0.0, None),
    (real(0, 1, below=True), 1.0, "must be in [0, 1)"),
    (real(0, 1, below=True), float("nan"), "must be in [0, 1)"),
    (real(0, 1, below=True), float("-inf"), "must be in [0, 1)"),
    (real(0, 1, below=True), 1e-300, "must be 0 or at least 1.2e-38"),  # float32 would train it as 0
    (real(0, 1, below=True), 1e-30, None),
    (real(0, 100, tiny=1e-4), 0.0, None),
    (real(0, 100, tiny=1e-4), 1e-5, "must be 0 or at least 0.0001"),
    (real(0, 1, above=True, tiny=1e-6), 1e-7, "must be at least 1e-6"),
    (real(0, 1, above=True, tiny=1e-6), 0.0, "must be in (0, 1]"),
])
def test_a_range_says_why_a_value_is_out_of_it(within, value, why):
    assert within.why_not(value) == why


@pytest.mark.parametrize(("within", "shown"), [
    (whole(1), "at least 1"), (whole(0, 1024), "0 to 1024"), (real(0, 1, below=True), "in [0, 1)"),
    (real(1, 1e12, above=True), "in (1, 1e12]"), (real(0, 100, tiny=1e-4), "in [0, 100]; 0 or at least 0.0001"),
    (real(0, 1, above=True, below=True, tiny=1e-6), "in (0, 1), at least 1e-6"),
])
def test_a_range_describes_itself_for_the_help(within, shown):
    assert within.describe() == shown


def test_every_default_is_in_its_own_range():
    for cls in [*SECTIONS.values(), SamplingOptions]:
        instance = cls()
        assert not [why for ok, _, why in range_checks(instance) if not ok], cls.__name__


@pytest.mark.parametrize(("key", "value", "message"), [
    ("train.max_steps", "-1", r"train\.max_steps: must be at least 1 \(got -1\)"),
    ("train.lr", "inf", r"train\.lr: must be in \(0, 10\] \(got inf\)"),
    ("train.epochs", "1e-300", r"train\.epochs: must be at least 1\.2e-38"),
    ("objective.eps", "1e-9", r"objective\.eps: must be at least 1e-6"),
    ("objective.sdd_k_curriculum", "1,0", r"objective\.sdd_k_curriculum: must be at least 1 \(got 0\)"),
    ("train.micro_batch_size", "0", r"train\.micro_batch_size: must be at least 1"),  # before it divides anything
])
def test_settings_out_of_range_name_the_field(key, value, message):
    with pytest.raises(PicolmError, match=message):
        build_config(None, {key: value})


@pytest.mark.parametrize("key, value", [("train.muon_lr", 0.015), ("train.muon_momentum", 0.9)])
def test_muon_settings_on_an_adamw_run_are_refused_not_dropped(key, value):
    with pytest.raises(PicolmError, match=f"{key}: applies to train.optimizer muon only"):
        build_config(None, {key: value})
    assert getattr(build_config(None, {key: value, "train.optimizer": "muon"}).train, key.split(".")[1]) == value
