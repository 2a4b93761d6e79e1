"""tools/mutation_check.py stays in step with the sources: every mutant still applies where it says.

The check itself (a copy, a native rebuild and a test subset per mutant: minutes) is run
before a release, not here; this only guards its list against source edits that would make a
mutant fail to apply, and checks that planting one changes exactly its file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tool_modules

mutation_check = tool_modules.load("mutation_check")
MUTANTS = mutation_check.MUTANTS


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_every_mutant_applies_once_and_names_existing_tests(mutant: Any) -> None:
    text = (mutation_check.ROOT / mutant.path).read_text()
    assert text.count(mutant.old) == 1 and mutant.new != mutant.old
    files = [t for t in mutant.tests if t.startswith("tests/")]
    assert files and all((mutation_check.ROOT / f).is_file() for f in files)


def test_the_three_bugs_of_issue_18_are_listed() -> None:
    assert {"body-clip", "native-row-range", "native-haar-range"} <= {m.name for m in MUTANTS}
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)


def test_a_copy_gets_the_mutant_and_its_own_passes_package(tmp_path: Path) -> None:
    mutation_check.make_copy(mutation_check.ROOT, tmp_path)
    mutant = next(m for m in MUTANTS if m.name == "body-clip")
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    mutation_check.apply(tmp_path, mutant)
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert [p for p in before if before[p] != after[p]] == [Path(mutant.path)]
    assert (tmp_path / "stamp_onnx" / "passes" / "__init__.py").is_file()
    with pytest.raises(SystemExit, match="occurs 0 times"):
        mutation_check.apply(tmp_path, mutant)  # already applied: the text is gone
