"""The example corpus: the Python standard library's own documentation, as instruction records.

Read from the running interpreter, so it needs no download: for each public module, class,
function and method, "Explain what `json.dumps` does in Python." -> its docstring. It is real,
messy text that nobody here wrote: duplicates (os/posix), signature lines, hard wraps, empty docs.
"""

import importlib
import inspect
import json
import sys
import warnings
from pathlib import Path
from typing import Any

# Modules with side effects on import (a browser, a GUI, printing), or test/packaging internals.
SKIP = {
    "antigravity",
    "this",
    "idlelib",
    "tkinter",
    "turtle",
    "turtledemo",
    "test",
    "lib2to3",
    "ensurepip",
    "pydoc_data",
    "venv",
    "msilib",
    "winreg",
    "winsound",
    "msvcrt",
    "nt",
    "_winapi",
    "sre_compile",
    "sre_constants",
    "sre_parse",
    "xxsubtype",
    "xxlimited",
}


def public_modules() -> list[str]:
    return sorted(n for n in sys.stdlib_module_names if not n.startswith("_") and n not in SKIP)


def _members(module: Any) -> list[tuple[str, Any]]:
    """Public classes and functions defined in `module`, and the public methods of its classes."""
    out = []
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj):
            out.append((name, obj))
            for attr, member in sorted(vars(obj).items()):
                if not attr.startswith("_") and callable(member):
                    out.append((f"{name}.{attr}", member))
        elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
            out.append((name, obj))
    return out


def stdlib_records(modules: list[str] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """(records, modules that could not be imported on this platform)."""
    records, skipped = [], []
    for mod_name in modules or public_modules():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(mod_name)
        except ImportError:  # platform-specific modules (e.g. curses without a terminal library)
            skipped.append(mod_name)
            continue
        records.append(_record(mod_name, f"the `{mod_name}` module", module))
        for qualname, obj in _members(module):
            records.append(_record(f"{mod_name}.{qualname}", f"`{mod_name}.{qualname}`", obj))
    return records, skipped


def _record(record_id: str, subject: str, obj: Any) -> dict[str, Any]:
    return {
        "id": record_id,
        "instruction": f"Explain what {subject} does in Python.",
        "input": "",
        # getdoc would inherit a parent's docstring; the object's own (possibly empty) one is the truth.
        "output": inspect.cleandoc(obj.__doc__) if isinstance(obj.__doc__, str) else "",
    }


def write_shards(records: list[dict[str, Any]], landing: Path, shards: int = 8) -> list[Path]:
    """Write records as `stdlib-00.jsonl` ... in contiguous, similar-sized chunks (module order)."""
    landing.mkdir(parents=True, exist_ok=True)
    size = -(-len(records) // shards)
    paths = []
    for i in range(shards):
        chunk = records[i * size : (i + 1) * size]
        path = landing / f"stdlib-{i:02d}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chunk))
        paths.append(path)
    return paths
