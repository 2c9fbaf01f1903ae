"""The README tells the truth about the settings: every one is documented with its default."""

from pathlib import Path

from fieldkit.config import SETTINGS, settings_markdown

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_setting_is_documented_in_the_readme():
    text = README.read_text()
    start, end = text.index("<!-- settings -->"), text.index("<!-- /settings -->")
    table = text[start + len("<!-- settings -->"):end].strip()
    missing = [name for name in SETTINGS if f"`{name}`" not in table]
    assert missing == [], f"undocumented settings (run `make docs`): {missing}"
    assert table == settings_markdown(), "the README's settings table is stale: run `make docs`"


def test_readme_names_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
