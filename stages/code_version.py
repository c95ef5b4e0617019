"""The one answer to "did the code change?": a hash of the source an asset or a cache runs.

`code_version("stages.cleaning", "stages.pii", asset_module=__name__)` hashes those modules and
every stages module they import, directly or through each other (read with `ast`, imports inside
functions included), plus the stages packages' `__init__` files that Python runs on the way. It
is computed when the code location loads, so editing a stages module gives exactly the assets
that run it a new code version, and Dagster marks them and their downstream unsynced; nothing
else changes. The scan caches and the evaluation's baseline cache key their entries with it too.

Only imports into `stages/` are followed: third-party code is pinned by the environment, and
`resources/` says where things live and which services are used, not what is computed.

An asset's own module (`asset_module`) counts by its own source, without following its imports:
asset modules hold a few lines of logic (what is read, which records go where), so editing one is
a code change, but an asset module imports what all of its assets run, and following that would
tie `raw_corpus` to the cleaning code. The honest price: editing `assets/corpus.py` makes both
`raw_corpus` and `clean_corpus` unsynced. Helpers outside stages/ that decide what an asset
writes (the shared training run in `assets/training_run.py`, the dataset card) are named among
the modules it runs, and their stages imports are followed too.

An import counts whatever it is used for (a type hint too): one module too many costs a rerun,
one too few a model that says "synced" while its code changed.
"""

import ast
import hashlib
from collections.abc import Callable
from functools import cache
from pathlib import Path

ROOT = Path(__file__).parents[1]
FOLLOWED = "stages"  # the package whose imports the closure follows


def module_file(name: str) -> Path | None:
    """The file of a project module (`stages.pii` -> stages/pii.py), or None if it is not one."""
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


# Read and parsed once per process: every asset's version together costs ~0.08 s at load (measured).
@cache
def read_source(name: str) -> bytes:
    path = module_file(name)
    if path is None:
        raise ValueError(
            f"code_version: {name!r} is no module of this project (no {name.replace('.', '/')}.py "
            f"under {ROOT}); name modules as they are imported, e.g. 'stages.pii'"
        )
    return path.read_bytes()


def closure(
    *modules: str, asset_module: str | None = None, read: Callable[[str], bytes] = read_source
) -> list[str]:
    """The modules a code version covers, sorted: those given, every stages module they import
    (transitively), the packages that hold them, and `asset_module` by its own source only."""
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += _packages(name) + sorted(_imports(name, read(name)))
    if asset_module is not None:
        seen |= {asset_module, *_packages(asset_module)}
    return sorted(seen)


def code_version(
    *modules: str, asset_module: str | None = None, read: Callable[[str], bytes] = read_source
) -> str:
    """A hash of the source of `closure(*modules, asset_module=asset_module)`.

    `read` returns a module's source; tests pass another to ask "what if this module changed?"."""
    digest = hashlib.sha256()
    for name in closure(*modules, asset_module=asset_module, read=read):  # the name too: a move is a change
        digest.update(name.encode() + b"\0" + read(name) + b"\0")
    return digest.hexdigest()[:16]


def _packages(name: str) -> list[str]:
    """The packages Python runs before a module: `stages.metrics.rouge_l` -> stages, stages.metrics."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@cache
def _imports(name: str, source: bytes) -> frozenset[str]:
    """The stages modules that `name` imports (relative imports resolved)."""
    path = module_file(name)
    package = name if path is not None and path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            # `from stages import pii` imports the module stages.pii; `from stages.pii import redact` a name.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return frozenset(
        m for m in found if (m == FOLLOWED or m.startswith(f"{FOLLOWED}.")) and module_file(m) is not None
    )
