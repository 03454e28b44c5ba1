import json

import pytest

from vec2face_tf import config as config_lib


def test_presets_differ_in_resolution():
    assert config_lib.get_config("smoke").data.resolution == 32
    assert config_lib.get_config("cpu64").data.resolution == 64
    assert config_lib.get_config("paper128").data.resolution == 128


def test_overrides_parse_to_field_types():
    config = config_lib.get_config("smoke", [
        "generator.base_channels=48", "losses.r1_gamma=0.5", "losses.adversarial=hinge",
        "flow.level_weights=1,0.5", "engine=deepface:Dlib"])
    assert config.generator.base_channels == 48
    assert config.losses.r1_gamma == 0.5
    assert config.losses.adversarial == "hinge"
    assert config.flow.level_weights == (1.0, 0.5)
    assert config.engine == "deepface:Dlib"
    # The preset's other fields are untouched.
    assert config.data.resolution == 32


@pytest.mark.parametrize("override, message", [
    ("generator.nope=1", "unknown config field 'generator.nope'"),
    ("generator=1", "is a section"),
    ("generator.base_channels=wide", "cannot parse 'wide' as int"),
    ("generator.base_channels", "not of the form"),
])
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.get_config("smoke", [override])


def test_unknown_preset():
    with pytest.raises(config_lib.ConfigError, match="unknown preset 'gpu9'"):
        config_lib.get_config("gpu9")


def test_json_round_trip():
    config = config_lib.get_config("smoke", ["flow.level_weights=1,2,3"])
    restored = config_lib.config_from_dict(json.loads(config.to_json()))
    assert restored == config
    assert config_lib.get_config("cpu64").crop.key == "dlib_5point-150-p0.25"
