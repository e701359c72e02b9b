"""The package's shape: the sampling side never imports torch, nothing imports in a cycle, and no
function is too long to read in one sitting."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "chargen"
LONGEST = 100  # lines


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The chargen modules a `from ... import ...` at module level names."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level:
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith("chargen"):
        return []
    if node.module is None:  # from . import x
        return [f"{target}.{a.name}" for a in node.names]
    return [target]


def module_level_imports(tree: ast.Module) -> list[ast.AST]:
    """Import statements that run when the module is imported (not inside functions, not TYPE_CHECKING)."""
    found = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            found += [n for n in node.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        elif isinstance(node, ast.Try):
            found += [n for n in node.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    return found


def graph() -> dict[str, set[str]]:
    trees = modules()
    edges = {}
    for name, tree in trees.items():
        is_package = (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()
        deps = set()
        for node in module_level_imports(tree):
            if isinstance(node, ast.ImportFrom):
                deps |= {d for d in resolve(name, is_package, node) if d in trees}
        edges[name] = deps - {name}
    return edges


def test_no_import_cycle():
    edges, state, cycles = graph(), {}, []

    def visit(node, path):
        state[node] = "open"
        for dep in sorted(edges[node]):
            if state.get(dep) == "open":
                cycles.append(path[path.index(dep):] + [dep] if dep in path else [node, dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_torch_is_imported_only_by_the_training_side_and_the_model():
    for name, tree in modules().items():
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            if any(n == "torch" or n.startswith("torch.") for n in names):
                assert name.startswith("chargen.training.") or name == "chargen.model", (name, node.lineno)


def test_the_sampling_side_does_not_reach_the_training_side():
    edges = graph()
    for name, deps in edges.items():
        if name.startswith("chargen.sampling"):
            assert not any(d.startswith("chargen.training") or d == "chargen.model" for d in deps), (name, deps)


def test_no_function_is_longer_than_a_sitting():
    long = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size >= LONGEST:
                    long.append(f"{name}.{node.name}: {size} lines")
    assert not long, long


def test_the_readmes_layout_names_every_module():
    """README's Layout names each module of the package under its own folder (it had fallen
    behind: three sampling modules and the allocator were missing)."""
    readme = (PACKAGE.parent / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```")[1]
    named: dict[str, set[str]] = {}  # folder ("" for the package's top) -> the file names its lines name
    folder = ""
    for line in block.splitlines()[2:]:  # (after "chargen/")
        indent = len(line) - len(line.lstrip())
        if indent == 0:
            break  # tests/, scripts/, ...: past the package
        head = line.split()[0] if line.strip() else ""
        if indent == 2 and head.endswith("/") and head != "static/":
            folder = head.rstrip("/")
        elif indent == 2:
            folder = ""
        named.setdefault(folder, set()).update(w.strip("():,") for w in line.split() if w.strip("():,").endswith(".py"))
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if path.name in ("__init__.py", "__main__.py", "_version.py"):
            continue
        where = str(rel.parent) if str(rel.parent) != "." else ""
        if path.name not in named.get(where, set()):
            missing.append(str(rel))
    assert not missing, f"README's Layout does not name {missing}"
