from pathlib import Path

import pytest

from assistant.config import ConfigError, Settings


def test_precedence_defaults_file_env_flags(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('top_k = 7\ngenerator_model = "from-file"\ndevice = "cpu"\n'
                      '[keys]\nnew_chat = "ctrl+t"\n')
    env = {"ASSISTANT_TOP_K": "9", "ASSISTANT_DATA_DIR": str(tmp_path / "d")}
    s = Settings.load(config_path=config, env=env, overrides={"device": "cuda", "top_k": None})
    assert s.top_k == 9  # env beats file
    assert s.generator_model == "from-file"  # file beats default
    assert s.device == "cuda"  # flag beats all
    assert s.keys == {"new_chat": "ctrl+t"}
    assert s.index_path == tmp_path / "d" / "index"
    assert Settings.load(env={"ASSISTANT_CONFIG": str(tmp_path / "none.toml")}).top_k == 5


@pytest.mark.parametrize("text,message", [
    ("top_k = 'many'", "top_k"),
    ("top_k = 0", "top_k"),
    ("colour = 'red'", "unknown setting"),
    ("retrieval_mode = 'magic'", "retrieval_mode"),
    ("top_k = [", "cannot read config"),
    ("answer_forms = 'maybe'", "answer_forms"),
])
def test_bad_config_is_a_one_line_error(tmp_path, text, message):
    config = tmp_path / "c.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        Settings.load(config_path=config, env={})
    assert "\n" not in str(info.value)


def test_missing_named_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Settings.load(config_path=Path(tmp_path / "nope.toml"), env={})


def test_a_switch_is_off_when_written_false(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("answer_forms = false\n")
    assert Settings.load(config_path=config, env={}).answer_forms is False
    none = {"ASSISTANT_CONFIG": str(tmp_path / "none.toml")}
    for word, on in (("false", False), ("0", False), ("Off", False), ("yes", True), ("true", True)):
        assert Settings.load(env={**none, "ASSISTANT_ANSWER_FORMS": word}).answer_forms is on
    assert Settings.load(env=none).answer_forms is True
