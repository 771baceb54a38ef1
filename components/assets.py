"""Files shipped inside asset packages (the embedded model, the safety prompt sets), found without importing them.

Both packages are installed with --no-deps, so importing them would fail on their missing dependencies;
`find_spec` locates the folder without running the package's code.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from components.errors import InputError


def package_file(package: str, relative: str) -> Path:
    """Path of `relative` inside the installed `package`; InputError naming both when either is missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"package {package!r} is not installed; run the README's setup (make setup)")
    path = Path(spec.submodule_search_locations[0]) / relative
    if not path.exists():
        raise InputError(f"{path} does not exist in package {package!r}")
    return path
