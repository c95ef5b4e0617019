"""What each asset declares it runs, read from the `code_version(...)` lines in assets/*.py.

Read from the source, not repeated here: tests/unit/test_code_version.py proves these
declarations give the Definitions' own versions, so a test can ask "what if this module changed?"
of every asset without editing a file.
"""

import ast
from collections.abc import Callable
from pathlib import Path

from stages.code_version import closure, code_version, read_source

ASSETS = Path(__file__).parents[1] / "assets"


def declared_runs() -> dict[str, tuple[str, list[str]]]:
    """asset -> (the module that defines it, the modules its `code_version(...)` names)."""
    runs = {}
    for path in sorted(ASSETS.glob("*.py")):
        tree = ast.parse(path.read_text())
        # `NAME = code_version(...)` at module level, shared by several assets (`code_version=NAME`).
        shared = {
            target.id: node.value
            for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef):
                continue
            for decorator in node.decorator_list:
                keywords = decorator.keywords if isinstance(decorator, ast.Call) else []
                for kw in keywords:
                    call = shared.get(kw.value.id) if isinstance(kw.value, ast.Name) else kw.value
                    if kw.arg == "code_version" and isinstance(call, ast.Call):
                        names = [a.value for a in call.args if isinstance(a, ast.Constant)]
                        runs[node.name] = (f"assets.{path.stem}", names)
    return runs


RUNS = declared_runs()


def asset_version(asset: str, read: Callable[[str], bytes] = read_source) -> str:
    module, runs = RUNS[asset]
    return code_version(*runs, asset_module=module, read=read)


def covered(asset: str) -> list[str]:
    """Every module whose source is in the asset's code version."""
    module, runs = RUNS[asset]
    return closure(*runs, asset_module=module)


def edited(module: str) -> Callable[[str], bytes]:
    """The source reader, as if `module` had just been edited (a comment added)."""
    return lambda name: read_source(name) + (b"\n# edited\n" if name == module else b"")
