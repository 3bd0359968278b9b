"""The user's model code as part of what decides a run: a digest of its source.

`model: package.module:function` names code outside the pipeline. Its source is part of
the run signature, so the nightly run retrains when it changes: the digest covers the
module's file and, when the module is inside a package, every `.py` file of that
top-level package (helpers the function imports change the model too).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

from pipeline.core.errors import ConfigError


def _module_files(module_name: str) -> list[Path]:
    top = module_name.split(".", 1)[0]
    try:
        spec = importlib.util.find_spec(module_name)
        if spec is None and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))  # as `python -m` would: the working folder's packages
            spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError) as err:
        raise ConfigError(f"model module {module_name!r} cannot be found: {err}") from None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise ConfigError(f"model module {module_name!r} cannot be found (install it or run from its folder)")
    origin = Path(spec.origin)
    if "." not in module_name and origin.name != "__init__.py":
        return [origin]
    top_spec = importlib.util.find_spec(top)
    roots = list(top_spec.submodule_search_locations or []) if top_spec else []
    files = sorted({path for root in roots for path in Path(root).rglob("*.py")})
    return files or [origin]


def model_code_digest(model: str) -> str | None:
    """SHA-256 over the source of the user's model module (see the module doc), or None for a built-in.

    Args:
        model: The config's `model`: a built-in name or 'package.module:function'.

    Raises:
        ConfigError: if the module cannot be found.
    """
    if ":" not in model:
        return None
    module_name = model.split(":", 1)[0]
    hasher = hashlib.sha256()
    files = _module_files(module_name)
    base = Path(os.path.commonpath([path.parent for path in files]))
    for path in files:
        hasher.update(f"{path.relative_to(base)}\0".encode() + path.read_bytes() + b"\0")
    return hasher.hexdigest()
