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


ROOT = README.parent
_DOC_NAME = __import__("re").compile(r"(?<![\w/.-])([\w/-]+\.md)\b")


def cited_documents(text: str) -> set[str]:
    """The Markdown documents a text names (README.md, models/README.md, ...)."""
    return set(_DOC_NAME.findall(text))


def test_no_file_cites_a_document_that_is_not_in_the_repository():
    sources = [p for p in ROOT.rglob("*") if p.suffix in (".md", ".py", ".toml", ".html", ".js")
               and not ({".venv", ".git", "vendor", "node_modules"} & set(p.relative_to(ROOT).parts))]
    missing = []
    for path in sources:
        for name in cited_documents(path.read_text(errors="replace")):
            here = (path.parent / name, ROOT / name)
            if not any(p.is_file() for p in here) and not list(ROOT.glob(f"**/{Path(name).name}")):
                missing.append(f"{path.relative_to(ROOT)} cites {name}")
    assert missing == [], "documents cited but not in the repository:\n" + "\n".join(missing)


def test_the_citation_check_sees_a_missing_document():
    absent = "NOT-IN-REPO" + ".md"  # spelt in two pieces so this file does not cite it
    assert cited_documents(f"see {absent} and `models/README.md`.") == {absent, "models/README.md"}
    assert not (ROOT / absent).exists()


def test_the_generated_config_file_reads_back_with_every_setting():
    """Settings of one section must sit together in SETTINGS, or the TOML repeats a table."""
    import tomllib

    from fieldkit.config import Config, render_toml

    parsed = tomllib.loads(render_toml(Config().as_dict()))
    flat = {f"{section}.{key}": value for section, table in parsed.items() for key, value in table.items()}
    assert set(flat) == set(SETTINGS)
