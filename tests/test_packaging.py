"""The package's metadata: the license it declares is the one it ships."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_declared_license_is_an_spdx_expression_and_its_text_ships() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()  # (tomllib is Python 3.11+; the package supports 3.10)
    assert re.search(r'^license = "Apache-2.0"$', pyproject, re.M)  # setuptools stops building the table form in 2027
    files = re.search(r"^license-files = \[(.*)\]$", pyproject, re.M)
    assert files is not None and files.group(1) == '"LICENSE"'
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
