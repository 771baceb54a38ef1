"""Docstrings of standard-library modules, read in a clean interpreter (`python -I -S this_file.py MODULE ...`).

A clean process matters: libraries such as transformers and torch patch standard-library classes
(`logging.Logger.warning_advice`), and default values print with memory addresses, so reading the
docstrings inside the pipeline's own process would give different data from run to run.
Standard library only: this file runs without the project on the path.
"""

import importlib
import inspect
import json
import re
import sys

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def documented_members(module_name):
    """[qualified name, signature, docstring] of the module's public functions, classes and methods."""
    module = importlib.import_module(module_name)
    public = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    found = []
    for name in sorted(public):
        obj = getattr(module, name, None)
        if getattr(obj, "__module__", None) not in {module_name, module_name.split(".")[0]}:
            continue  # re-exported from elsewhere: documented under its own module
        members = [(f"{module_name}.{name}", obj)]
        if inspect.isclass(obj):
            members += [
                (f"{module_name}.{name}.{m}", f)
                for m, f in sorted(vars(obj).items())
                if not m.startswith("_") and inspect.isfunction(f)
            ]
        for qualname, member in members:
            doc = inspect.getdoc(member)
            if not doc or not (inspect.isfunction(member) or inspect.isclass(member) or inspect.isbuiltin(member)):
                continue
            try:
                signature = _ADDRESS.sub("", str(inspect.signature(member)))
            except (TypeError, ValueError):
                signature = "(...)"
            found.append([qualname, signature, doc])
    return {"doc": inspect.getdoc(module) or "", "members": found}


if __name__ == "__main__":
    json.dump({name: documented_members(name) for name in sys.argv[1:]}, sys.stdout)
