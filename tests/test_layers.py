"""The package's layers (docs/ARCHITECTURE.md): each imports only from the layers below it, peers in a layer do not
import each other, there are no import cycles, and code outside the families never branches on which family runs.
Every import counts, at the top of a module or inside a function."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "picolm"

LAYERS = [  # lowest first: (name, the packages or modules in it); peers in a layer do not import each other
    ("errors", ["picolm.errors", "picolm.files"]),
    ("base", ["picolm", "picolm.config", "picolm.tokenizer", "picolm.runtime", "picolm.checkpoint", "picolm.locks"]),
    ("data", ["picolm.data"]),
    ("models", ["picolm.models"]),
    ("methods", ["picolm.methods"]),
    ("interop", ["picolm.interop"]),
    ("loading", ["picolm.loading"]),
    ("train / generate", ["picolm.train", "picolm.generate"]),
    ("eval", ["picolm.eval"]),
    ("analysis / chat / export", ["picolm.analysis", "picolm.chat", "picolm.interop.export"]),
    ("pipelines", ["picolm.pipeline"]),
    ("cli", ["picolm.cli"]),
    ("entry point", ["picolm.__main__"]),
]
GROUPS = {group: (rank, name) for rank, (name, groups) in enumerate(LAYERS) for group in groups}
# modules that only keep an old import path working, whatever layer it was in
ALIASES = {"picolm.models.picolm_transformers": "folders exported before picolm.interop existed import it"}
FAMILY_WORDS = re.compile(r"sdd|mdlm|diffusion|denois|preference|masked_response|is_sdd", re.I)


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


SOURCES = {module_name(path): path.read_text(encoding="utf-8") for path in sorted(PACKAGE.rglob("*.py"))}
MODULES = {module: ast.parse(source) for module, source in SOURCES.items()}


def group_of(module: str) -> str:
    return max((g for g in GROUPS if module == g or module.startswith(g + ".")), key=len)


def imports(module: str) -> set[str]:
    """The picolm modules `module` imports (a name imported from a package counts as its module when it is one)."""
    found = set()
    for node in ast.walk(MODULES[module]):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("picolm") and not node.level:
            for alias in node.names:
                found.add(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("picolm")}
    return {name for name in found if name in MODULES and name != module}


def test_every_module_has_a_layer():
    for module in MODULES:
        assert any(module == g or module.startswith(g + ".") for g in GROUPS), f"{module} is in no layer: add it"


def test_no_module_imports_from_a_higher_layer_or_a_peer():
    wrong = []
    for module in MODULES:
        if module in ALIASES:
            continue
        group = group_of(module)
        rank, layer = GROUPS[group]
        for target in imports(module):
            target_rank, target_layer = GROUPS[group_of(target)]
            if group_of(target) != group and target_rank >= rank:
                wrong.append(f"{module} ({layer}) imports {target} ({target_layer})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph = {module: imports(module) for module in MODULES}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(" <-> ".join(sorted(component)))

    for module in graph:
        if module not in index:
            visit(module)
    assert not cycles, "\n".join(cycles)


def test_code_outside_the_families_never_asks_which_family_runs():
    """Conditions outside picolm/methods that name a family are branches the family should answer instead."""
    branches = []
    for module, tree in MODULES.items():
        if module.startswith("picolm.methods"):
            continue
        source = SOURCES[module]
        for node in ast.walk(tree):
            test = node.test if isinstance(node, (ast.If, ast.IfExp, ast.While, ast.Assert)) else None
            if test is not None and FAMILY_WORDS.search(ast.get_source_segment(source, test) or ""):
                branches.append(f"{module}:{node.lineno}: {ast.get_source_segment(source, test)}")
    assert not branches, "\n".join(branches)


@pytest.mark.parametrize("module, target", [("picolm.models.gpt", "picolm.train.trainer"),
                                            ("picolm.generate", "picolm.train.setup"),
                                            ("picolm.config", "picolm.tokenizer")])
def test_the_check_names_both_modules_of_a_wrong_import(module, target, monkeypatch):
    """The test above can fail: an upward or sideways import is reported with both modules named."""
    tree = MODULES[module]
    planted = ast.parse(f"from {target} import x").body[0]
    monkeypatch.setitem(MODULES, module, ast.Module(body=[*tree.body, planted], type_ignores=[]))
    with pytest.raises(AssertionError, match=re.escape(f"{module} (") + r".*" + re.escape(f"imports {target} (")):
        test_no_module_imports_from_a_higher_layer_or_a_peer()


def test_the_cycle_check_names_the_modules_of_a_cycle(monkeypatch):
    """picolm.data.examples imports picolm.data.loader; planting the way back makes a cycle, reported by name."""
    tree = MODULES["picolm.data.loader"]
    planted = ast.parse("from picolm.data.examples import collate_sft").body[0]
    monkeypatch.setitem(MODULES, "picolm.data.loader", ast.Module(body=[*tree.body, planted], type_ignores=[]))
    with pytest.raises(AssertionError, match=re.escape("picolm.data.examples <-> picolm.data.loader")):
        test_no_import_cycles()
