"""The house: minisiglip's modules stand on floors, and none imports one that imports it.

A module's floor is 0 if it imports no other minisiglip module, else one above the highest floor it imports. An
import circle (`hf` imported `train`, which imported `hf` inside its functions) has no floors: each module of the
circle needs the other loaded first, the circle's import order decides what a half-initialised module holds, and a
reader cannot learn the package bottom up. Imports are read from the source with `ast`, those inside functions
included: a deferred import is still a dependency, only a hidden one.
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / 'minisiglip'


def imported_modules(file: Path, package: str = 'minisiglip') -> set[str]:
    "The package's modules that `file` imports anywhere in it: `from .x import`, `from minisiglip.x import`, `import minisiglip.x`."
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if (node.level, base) in ((1, ''), (0, package)):            # from . import train
                found |= {a.name for a in node.names}
            elif node.level == 1: found.add(base.split('.')[0])
            elif node.level == 0 and base.startswith(f'{package}.'): found.add(base.split('.')[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split('.')[1] for a in node.names if a.name.startswith(f'{package}.')}
    return found


def import_graph(package_dir: Path = PACKAGE) -> dict[str, set[str]]:
    "`{module: the package modules it imports}` for every module of `package_dir` (`_modidx` and `__init__` left out)."
    modules = {p.stem: p for p in package_dir.glob('*.py') if not p.stem.startswith('_')}
    return {name: imported_modules(path) & set(modules) - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    "One import circle of `graph` as `[a, b, ..., a]`, or None: a depth-first search that meets a module on its own path."
    done, path = set(), []

    def visit(m: str) -> list[str] | None:
        if m in path: return path[path.index(m):] + [m]
        if m in done: return None
        path.append(m)
        for n in sorted(graph[m]):
            if cycle := visit(n): return cycle
        path.pop()
        done.add(m)
        return None

    for m in sorted(graph):
        if cycle := visit(m): return cycle
    return None


def floors(graph: dict[str, set[str]]) -> dict[str, int]:
    "Each module's floor: 0 without package imports, else 1 + the highest floor it imports (the graph must have no circle)."
    out: dict[str, int] = {}

    def floor(m: str) -> int:
        if m not in out: out[m] = 1 + max((floor(n) for n in graph[m]), default=-1)
        return out[m]

    for m in graph: floor(m)
    return out


def test_graph_reads_every_kind_of_import(tmp_path):
    "The reader sees relative, absolute and function-level imports, and finds the circle they make."
    (tmp_path / 'a.py').write_text('from .b import x\n')
    (tmp_path / 'b.py').write_text('def f():\n    from minisiglip.c import y\n')
    (tmp_path / 'c.py').write_text('import minisiglip.a\n')
    (tmp_path / 'd.py').write_text('import torch\nfrom . import a\n')
    graph = import_graph(tmp_path)
    assert graph == {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}
    assert find_cycle(graph) == ['a', 'b', 'c', 'a']


def test_no_import_circle():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, f"import circle: {' -> '.join(cycle)}; move what they share down a floor"
    by_floor: dict[int, list[str]] = {}
    for m, f in floors(graph).items(): by_floor.setdefault(f, []).append(m)
    for f in sorted(by_floor): print(f'floor {f}:', ', '.join(sorted(by_floor[f])))
    assert all(graph[m] == set() for m in by_floor[0])
