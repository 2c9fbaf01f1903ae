"""Every setting says what it allows, and a bad value in `fieldkit.toml` stops every command
that reads it with one message naming the setting, and exit code 2 (never a traceback).

The tests walk `config.SETTINGS`, so a new setting is covered as soon as it is added, and
one without a check (range, choices or rule) fails `test_every_setting_has_a_check`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fieldkit import config
from fieldkit.config import SETTINGS, Config, ConfigError, render_toml

FIELDKIT = str(Path(sys.executable).parent / "fieldkit")
PASSPHRASE = "correct horse battery staple"

# A realistic value each rule must refuse (besides control characters, refused by all).
RULE_EXAMPLES = {
    config.ADDRESS: "kit.local",
    config.AE_TITLE: "X" * 17,
    config.MOVE_DESTINATION: "VIEWER@127.0.0.1",
    config.KIT_ID: "K 42/../x",
    config.UID_ROOT: "2.25.",
    config.DICOM_TEXT: "back\\slash",
    config.TEXT: "two\nlines",
    config.PATH: "nul\x00byte",
    config.DIR_PATH: "",
    config.NAME: "../etc/passwd",
    config.HOSPITAL_URL: "https://user:secret@pacs.example/dicom-web",
    config.KIT_URL: "http://fieldkit.lan:8443/",
    config.TIME_WINDOW: "25:00-06:00",
    config.ED25519_KEY: "ed25519:AAAA",
    config.RETRIAGE_MINUTES: "red=0",
    config.ZONE_NAME: "z" * 41,
    config.ORIGIN: "https://viewer.lan/ohif",
    config.PROXY_ADDRESS: "proxy.lan",
}


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's string escapes (\u0007, \n, \") are TOML's too
    return "[" + ", ".join(toml_value(v) for v in value) + "]"


def toml_file(values: dict) -> str:
    """A fieldkit.toml holding `values` (dotted names), as an operator would write it."""
    tables: dict[str, list[str]] = {}
    for name, value in values.items():
        table, key = name.split(".", 1)
        tables.setdefault(table, []).append(f"{key} = {toml_value(value)}")
    return "".join(f"[{t}]\n" + "\n".join(lines) + "\n\n" for t, lines in tables.items())


def out_of_range(setting) -> list:
    """Values of the right type that the setting must refuse."""
    d = setting.default
    if isinstance(d, bool):
        return []
    if setting.choices:
        return [max(setting.choices) + 1 if isinstance(d, int) else "no-such-choice"]
    if setting.rule is not None:
        bad = ["bell\x07", RULE_EXAMPLES[setting.rule]]
        return [[b] for b in bad] if isinstance(d, list) else bad
    step = 1 if isinstance(d, int) else 0.5
    out = []
    if setting.min is not None:
        out.append(type(d)(setting.min - step))
    if setting.max is not None:
        out.append(type(d)(setting.max + step))
    if setting.above is not None:
        out.append(type(d)(setting.above))  # the bound itself is not "more than"
    return out


def test_infinite_or_nan_numbers_are_refused(tmp_path):
    path = tmp_path / "fieldkit.toml"
    for text in ("inf", "nan", "-inf"):
        path.write_text(f"[hospital]\nread_timeout_seconds = {text}\n")
        with pytest.raises(ConfigError, match="hospital.read_timeout_seconds must be a finite number"):
            Config.load(path)


def test_a_refused_url_does_not_echo_its_password(tmp_path):
    path = tmp_path / "fieldkit.toml"
    path.write_text('[hospital]\nurl = "https://kit:s3cret@pacs.example/dicom-web"\n')
    with pytest.raises(ConfigError) as caught:
        Config.load(path)
    assert "s3cret" not in caught.value.message
    assert 'hospital.url = "https://***@pacs.example/dicom-web"' in caught.value.message


def wrong_type(setting):
    d = setting.default
    return "eighty" if isinstance(d, (bool, int, float)) else (5 if isinstance(d, str) else "not a list")


def test_every_setting_has_a_check_and_its_default_passes():
    unchecked = [n for n, s in SETTINGS.items() if not isinstance(s.default, bool) and not s.checked]
    assert unchecked == [], "give these settings a range, choices or a rule in fieldkit/config.py"
    assert {n: s.problem(s.default) for n, s in SETTINGS.items() if s.problem(s.default)} == {}
    assert Config().as_dict() == {n: s.default for n, s in SETTINGS.items()}
    # the file `fieldkit init` writes loads as it is
    assert Config(Config().as_dict()).as_dict() == Config().as_dict()
    rules = {s.rule for s in SETTINGS.values() if s.rule is not None}
    assert rules <= set(RULE_EXAMPLES), "add an example the new rule refuses to RULE_EXAMPLES"


@pytest.mark.parametrize("name", [n for n, s in SETTINGS.items() if not isinstance(s.default, bool)])
def test_each_bad_value_alone_is_refused_naming_the_setting(name, tmp_path):
    setting = SETTINGS[name]
    path = tmp_path / "fieldkit.toml"
    bad = out_of_range(setting) + [wrong_type(setting)]
    assert bad
    for value in bad:
        path.write_text(toml_file({name: value}))
        with pytest.raises(ConfigError) as caught:
            Config.load(path)
        message = caught.value.message
        assert name in message and str(path) in message, message
        assert "\n" not in message  # one bad value, one line
        if value != wrong_type(setting):
            assert setting.allowed() in message
    # the edge of each range is allowed (on its own: settings compared with another aside)
    paired = {n for pair in config._AT_MOST for n in pair}
    for edge in (setting.min, setting.max):
        if edge is not None and name not in paired:
            path.write_text(toml_file({name: type(setting.default)(edge)}))
            assert Config.load(path)[name] == edge


@pytest.fixture(scope="module")
def kit_dir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("config-kit")
    (work / "pp").write_text(PASSPHRASE + "\n")
    result = subprocess.run([FIELDKIT, "init", "--data-dir", str(work / "kit"), "--passphrase-file",
                             str(work / "pp"), "--kit-id", "CFG1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return work / "kit"


def run_with_config(kit_dir: Path, text: str, *command: str) -> subprocess.CompletedProcess:
    (kit_dir / "fieldkit.toml").write_text(text)
    return subprocess.run([FIELDKIT, *command, "--data-dir", str(kit_dir)], capture_output=True,
                          text=True, timeout=120)


def test_doctor_refuses_every_out_of_range_value_with_exit_2(kit_dir):
    good = (kit_dir / "fieldkit.toml").read_text()
    try:
        bad = {n: out_of_range(s)[0] for n, s in SETTINGS.items() if out_of_range(s)}
        result = run_with_config(kit_dir, toml_file(bad), "doctor")
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr and result.stdout == ""
        missing = [n for n in bad if f"{n} = " not in result.stderr]
        assert missing == [], result.stderr

        wrong = {n: wrong_type(s) for n, s in SETTINGS.items()}
        result = run_with_config(kit_dir, toml_file(wrong), "doctor")
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert [n for n in wrong if f"{n} must be" not in result.stderr] == [], result.stderr
    finally:
        (kit_dir / "fieldkit.toml").write_text(good)


@pytest.mark.parametrize("values,words", [
    ({"http.port": 99999}, ["http.port = 99999", "0 to 65535"]),
    ({"hospital.auth": "foo"}, ['hospital.auth = "foo"', "one of none, basic, bearer, client-cert"]),
    ({"http.threads": 0}, ["http.threads = 0", "1 to 1024"]),
    ({"power.battery_low_percent": 250.0}, ["power.battery_low_percent = 250.0", "0 to 100"]),
    ({"http.bind": "kit.local"}, ['http.bind = "kit.local"', "an IP address"]),
    ({"power.battery_low_percent": 10.0, "power.battery_critical_percent": 20.0},
     ["power.battery_critical_percent = 20.0 must not be above power.battery_low_percent = 10.0"]),
    ({"store.warn_free_mb": 100, "store.refuse_free_mb": 500},
     ["store.refuse_free_mb = 500 must not be above store.warn_free_mb = 100"]),
    ({"http.port": 11112}, ["dicom.port and http.port are both 11112"]),
    ({"dicom.tls_port": 11112}, ["dicom.tls_port and dicom.port are both 11112"]),
])
@pytest.mark.parametrize("command", ["serve", "doctor"])
def test_a_bad_or_clashing_value_stops_the_command_with_exit_2(kit_dir, values, words, command):
    good = (kit_dir / "fieldkit.toml").read_text()
    try:
        result = run_with_config(kit_dir, render_toml({**Config.load(kit_dir / "fieldkit.toml").as_dict(),
                                                       **values}), command)
    finally:
        (kit_dir / "fieldkit.toml").write_text(good)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: config file ") and "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr


def test_a_bad_port_on_the_command_line_is_refused_too(kit_dir):
    result = subprocess.run([FIELDKIT, "serve", "--data-dir", str(kit_dir), "--http-port", "99999"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "http.port = 99999" in result.stderr and "Traceback" not in result.stderr


def test_fieldkit_toml_and_the_readme_say_what_is_allowed():
    text = render_toml()
    assert "port = 8443" in text and "allowed: 0 to 65535" in text
    assert "allowed: one of auto, jpeg-ls, jpeg2000, rle, none" in text
    assert "| `http.port` | `8443` | 0 to 65535 |" in (Path(__file__).parents[1] / "README.md").read_text()


def test_a_kit_that_still_lists_an_earlier_default_follows_the_default():
    """`fieldkit init` writes every setting out; a kit made before the second release key
    still lists only the first, one made before the third the first two, one made before the
    fourth the first three, and all must load the reference models signed with the later keys."""
    first = ["ed25519:pNGyLZmG+7OUf/gRKS7io+9LFLLYVejGRGI3xbmn9+E="]
    first_two = [*first, "ed25519:fNXErZy0s7FAg8/ygXurEKf2N8K8kNmvvLEiiGREIHg="]
    first_three = [*first_two, "ed25519:UmbnTWRj6UXVy2k1GLMFdIPuKbefeQk0s5JgI5wfKWU="]
    default = SETTINGS["inference.trusted_keys"].default
    assert default[:3] == first_three and len(default) == 4
    for earlier in (first, first_two, first_three):
        assert earlier in SETTINGS["inference.trusted_keys"].earlier_defaults and earlier != default
        assert Config({"inference.trusted_keys": earlier})["inference.trusted_keys"] == default
    # a list the operator chose is kept as it is, even with the first key in it
    own = "ed25519:" + "A" * 43 + "="
    assert Config({"inference.trusted_keys": [*first, own]})["inference.trusted_keys"] == [*first, own]
    assert Config({"inference.trusted_keys": []})["inference.trusted_keys"] == []
