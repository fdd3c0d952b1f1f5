"""Tag names live in api/contract.py only: a dotted tag written out elsewhere would drift from it."""

import ast

from api.release import contract

from ..conftest import ROOT

DOTTED_TAGS = {
    value
    for name, value in vars(contract).items()
    if name.isupper() and isinstance(value, str) and "." in value and not value.endswith((".json", ".md"))
}


def bare_tag_strings(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string constant in `source` that spells a contract tag."""
    return [
        (node.lineno, node.value)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in DOTTED_TAGS
    ]


def test_the_contract_names_the_tags_the_design_document_lists():
    design = (ROOT / "docs" / "DESIGN.md").read_text()
    for tag in DOTTED_TAGS - {contract.METRIC_TAG_PREFIX, contract.HISTORY_PREFIX}:
        assert f"`{tag}`" in design or tag in design, f"{tag} is missing from docs/DESIGN.md's tag contract"


def test_no_module_spells_a_tag_name_itself():
    found = {
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for package in ("pipeline", "api", "gates")
        for path in (ROOT / package).rglob("*.py")
        if path.name != "contract.py"
        for line, text in bare_tag_strings(path.read_text())
    }
    assert not found, "use api.release.contract instead of: " + ", ".join(sorted(found))


def test_the_check_finds_a_bare_tag():
    assert bare_tag_strings('tags = {"smoke.at": now, "note": "smoke.at is a tag"}') == [(1, "smoke.at")]
