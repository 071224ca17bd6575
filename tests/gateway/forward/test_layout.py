"""The forwarding path's imports go one way: the rest of ``gateway`` enters it only at the
composition point (the orchestrator and the parts it is built from) and reads a finished
request's ``Exchange``; inside, no module imports the orchestrator and there is no cycle."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
FORWARD = ROOT / "gateway" / "forward"
# who outside the package may import which of its modules
ENTRY = {
    "app.py": {"orchestrator", "parts", "dialer", "ledger"},  # builds the path (composition point)
    "state.py": {"orchestrator"},  # the PROXY AppKey's type
    "access.py": {"exchange"}, "traffic.py": {"exchange"}, "quota.py": {"exchange"},  # a finished request
}


def forward_imports(path: Path) -> set[str]:
    """The gateway.forward modules ``path`` imports (by their last name)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        found |= {n.split(".")[2] for n in names if n.startswith("gateway.forward.")}
    return found


def test_the_rest_of_the_gateway_enters_only_at_the_composition_point() -> None:
    outside = {p.name: forward_imports(p) for p in (ROOT / "gateway").glob("*.py")}
    assert {n: sorted(m - ENTRY.get(n, set())) for n, m in outside.items() if m - ENTRY.get(n, set())} == {}


def test_inside_the_package_nothing_calls_back_up_and_nothing_is_circular() -> None:
    graph = {p.stem: forward_imports(p) for p in FORWARD.glob("*.py") if p.stem != "__init__"}
    assert [m for m, deps in graph.items() if "orchestrator" in deps] == []
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path, module))
        if module not in done:
            for dep in sorted(graph[module]):
                visit(dep, (*path, module))
            done.add(module)

    for module in sorted(graph):
        visit(module, ())


def test_the_scan_sees_an_import(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("from gateway.forward.ledger import Ledger\nimport gateway.forward.relay\n")
    assert forward_imports(src) == {"ledger", "relay"}
