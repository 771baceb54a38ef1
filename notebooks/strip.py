"""Strip outputs and execution counts from notebooks before committing: `make strip-notebooks`."""

import sys
from pathlib import Path

import nbformat


def strip(path: Path) -> bool:
    """Remove outputs in place; True when the file changed."""
    notebook = nbformat.read(path, as_version=4)
    before = nbformat.writes(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
    after = nbformat.writes(notebook)
    if after != before:
        path.write_text(after)
    return after != before


if __name__ == "__main__":
    for name in sys.argv[1:] or sorted(str(p) for p in Path(__file__).parent.glob("*.ipynb")):
        if strip(Path(name)):
            print(f"stripped {name}")
