"""The layout's rules, checked on the code itself rather than trusted.

1. The front is torch-free: a fresh interpreter imports every ``app`` module, the front modules of
   ``studio_core`` (spec, errors, models, prompts) and every ``studio_core.study`` and
   ``studio_core.store`` module, then does what the page does before a run (checks a spec against
   the embedded model, asks every knob whether the model can take it, builds the page, both editable
   and as a read-only demo), and torch, diffusers and transformers are still not imported.
2. No import cycles between the studio's modules, counting imports inside functions too (the graph
   is read from the source): a cycle closed by an import hidden in a function is how the last one
   (spec <-> knobs) went unnoticed. Error types are imported at module level, from one module.
3. Only ``studio_core/store/`` talks SQL.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers")

FRONT_PROBE = textwrap.dedent('''
    import importlib, pkgutil, sys, tempfile, traceback

    HEAVY = {heavy!r}
    first = {{}}

    class Watch:
        """Remembers the import stack that first brought in a heavy package."""
        def find_spec(self, name, path=None, target=None):
            top = name.split(".")[0]
            if top in HEAVY and top not in first:
                first[top] = "".join(traceback.format_stack(limit=25)[:-1])
            return None

    sys.meta_path.insert(0, Watch())

    def check(step):
        loaded = [m for m in HEAVY if m in sys.modules]
        if loaded:
            print(f"FAIL after {{step}}: {{', '.join(loaded)}} imported; first import of {{loaded[0]}}:")
            print(first.get(loaded[0], "(stack not recorded)"))
            sys.exit(1)

    modules = []

    def load(name):
        importlib.import_module(name)
        modules.append(name)
        check(f"import {{name}}")

    def walk(package):  # the package, then each of its modules in turn, checked one by one
        load(package)
        for m in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
            load(m.name)

    walk("app")
    for name in ("studio_core.errors", "studio_core.spec", "studio_core.models", "studio_core.prompts"):
        load(name)
    walk("studio_core.study")
    walk("studio_core.store")

    from studio_core.knobs import KNOBS
    from studio_core.spec import RunSpec, model_info, resolve, validate
    spec = RunSpec(prompt_set="emoji-4", seeds=(0, 1), steps=8, sampler="DPM++ 2M")
    validate(spec)
    resolved, info = resolve(spec)
    assert resolved.steps == 8 and len(resolved.prompts) == 4, resolved
    info = model_info("emoji-sd")
    for knob in KNOBS.values():
        try:
            settings = knob.Settings()
        except TypeError:  # settings without defaults: nothing to check before they are filled in
            continue
        knob.check_model(info, settings)
    check("validate, resolve, model_info and every knob's check_model")

    from app.layout import build_demo
    study = tempfile.mkdtemp(prefix="front-probe-")
    build_demo(data_dir=study)
    check("build_demo (editable)")
    build_demo(data_dir=study, read_only=True)
    check("build_demo (read-only demo)")
    print(f"torch-free: {{len(modules)}} modules imported, spec resolved, knobs checked, page built")
''').format(heavy=HEAVY)


def test_the_front_never_imports_torch_or_diffusers(tmp_path):
    proc = subprocess.run([sys.executable, "-c", FRONT_PROBE], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                            "GRADIO_ANALYTICS_ENABLED": "False"})
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "torch-free:" in proc.stdout


# ------------------------------------------------------------------------------------------ import graph
def _python_modules() -> dict[str, Path]:
    """Module name -> file, for the studio's own packages."""
    found = {}
    for package in ("studio_core", "app"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _resolve(module: str, node: ast.ImportFrom | ast.Import, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def _import_graph() -> dict[str, set[str]]:
    """Module -> the studio modules it imports anywhere: at module level or inside a function. A cycle
    closed by an import inside a function is still a cycle (it only fails later, or in another order)."""
    modules = _python_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets.update(t for t in _resolve(name, node, path.name == "__init__.py") if t in modules)
            elif isinstance(node, ast.For) and _imports_by_name(node):  # a registry importing its modules by name
                targets.update(f"{name}.{c.value}" for c in getattr(node.iter, "elts", ())
                               if isinstance(c, ast.Constant) and f"{name}.{c.value}" in modules)
        graph[name] = targets - {name}
    return graph


def _imports_by_name(loop: ast.For) -> bool:
    """``for m in ("a", "b"): importlib.import_module(f"{__name__}.{m}")``: the knob registry's own imports."""
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "import_module"
               for n in ast.walk(loop))


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            # importing a.b.c runs a/__init__ and a/b/__init__ first: a package's own submodules are not a cycle
            if node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycles_between_studio_modules():
    graph = _import_graph()
    assert len(graph) > 40, sorted(graph)  # the walk found the packages
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_views_reach_the_engine_only_through_the_study_service():
    """app/ never imports studio_core.measure, not even inside a function: the service is the one door."""
    graph = _import_graph()
    direct = {m: sorted(t for t in targets if t.startswith("studio_core.measure"))
              for m, targets in graph.items() if m == "app" or m.startswith("app.")}
    assert not any(direct.values()), {m: t for m, t in direct.items() if t}
    assert "studio_core.study.service" in set().union(*graph.values())


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "pkg.x": {"pkg"}, "pkg": {"pkg.x"}}) is None


def test_errors_are_imported_at_module_level_never_hidden_in_functions():
    hidden = []
    for name, path in _python_modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and (inner.module or "").endswith("errors"):
                        hidden.append(f"{path.relative_to(ROOT)}:{inner.lineno}")
    assert not hidden, f"error types imported inside functions: {hidden}"


def test_only_the_store_package_talks_sql():
    """SQL strings and sqlite connections live in studio_core/store/; views call RunStore methods."""
    offenders = []
    for name, path in _python_modules().items():
        if name.startswith("studio_core.store"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if any(m.split(".")[0] in ("sqlite3", "sqlite_utils") for m in mods):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {mods[0]}")
            if isinstance(node, ast.Attribute) and node.attr in ("execute", "executescript", "executemany"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} calls .{node.attr}()")
    assert not offenders, offenders
