"""Copies the Palmer penguins table that the `palmerpenguins` package ships into examples/penguins/data/.

The table (344 penguins, 3 species, islands, measurements, sex; some values missing) is the
package's own file, installed from PyPI with requirements.txt: nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

DESTINATION = Path(__file__).resolve().parent / "data" / "penguins.csv"


def packaged_table() -> Path:
    """The CSV inside the installed palmerpenguins package (found without importing it)."""
    spec = importlib.util.find_spec("palmerpenguins")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("palmerpenguins is not installed: run `make setup` (it installs requirements.txt)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "penguins.csv"


def main() -> None:
    DESTINATION.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(packaged_table(), DESTINATION)
    rows = sum(1 for _ in DESTINATION.open()) - 1
    print(f"wrote {DESTINATION} ({rows} rows)")


if __name__ == "__main__":
    main()
