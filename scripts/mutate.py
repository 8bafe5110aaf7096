"""`make mutate`: a bounded mutation run. Breaks one line of the server at a time (a comparison
flipped, `and` for `or`, a constant moved by one, a call statement dropped, ...), runs the
tests that claim that module's behaviour, and lists the mutants no test noticed.

    python scripts/mutate.py [PATH ...] [--max-mutants 60] [--budget 900] [--seed 1] [--e2e]
                             [--pytest-args "-k 'not logrotate'"]

PATH defaults to qproxy/proxy/, qproxy/tls/protocol.py and qproxy/daemon/. Mutants run in a
copy of the tree (the working tree is never modified), are sampled with a fixed seed when there
are more than --max-mutants, and the run stops at --budget seconds. The tests for a module are
the in-process test files that import it, plus those named in TESTS below; `--e2e` adds the
end-to-end files named there (slower: they start the daemon). Exit status 0 unless the tests
fail on the unmutated code; the survivors are the report.

Why our own and not mutmut: mutmut 3 runs the whole suite through its trampolines before it
mutates anything and copies the tree into mutants/; with our end-to-end tests starting daemons
that import the package afresh, that does not fit a bounded run on two shared cores.
"""

from __future__ import annotations

import argparse
import ast
import io
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tokenize
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PATHS = ("qproxy/proxy", "qproxy/tls/protocol.py", "qproxy/daemon")
# Tests that claim a module's behaviour without importing it by name. "e2e" entries run only
# with --e2e. Files that do not exist (yet) are ignored.
TESTS: dict[str, dict[str, tuple[str, ...]]] = {
    "qproxy/proxy/http.py": {"fast": ("tests/test_http_protocol.py",),
                             "e2e": ("tests/test_e2e_http.py",)},
    **{f"qproxy/proxy/{name}.py": {"fast": ("tests/test_http_protocol.py",
                                            "tests/test_http_fuzz.py"),
                                   "e2e": ("tests/test_e2e_http.py",
                                           "tests/test_e2e_http_limits.py")}
       for name in ("connection", "answering", "request_cycle", "request_reader",
                    "request_body", "request", "flow", "tunnel", "http_state")},
    "qproxy/proxy/handler.py": {"fast": (), "e2e": ("tests/test_e2e_proxy.py",
                                                     "tests/test_e2e_http.py")},
    "qproxy/proxy/backend.py": {"fast": ("tests/test_backend.py",),
                                "e2e": ("tests/test_e2e_streaming.py",)},
    "qproxy/proxy/upstream.py": {"fast": ("tests/test_upstream.py",), "e2e": ()},
    "qproxy/proxy/headers.py": {"fast": ("tests/test_headers.py",), "e2e": ()},
    "qproxy/tls/protocol.py": {"fast": ("tests/test_tls_protocol.py",),
                               "e2e": ("tests/test_e2e_tls.py", "tests/test_e2e_http_limits.py")},
    "qproxy/daemon/worker.py": {"fast": ("tests/test_daemon_units.py",),
                                "e2e": ("tests/test_e2e_workers.py",)},
    "qproxy/daemon/master.py": {"fast": ("tests/test_daemon_units.py",),
                                "e2e": ("tests/test_e2e_workers.py",
                                        "tests/test_e2e_lifecycle.py")},
    "qproxy/daemon/server.py": {"fast": (), "e2e": ("tests/test_e2e_lifecycle.py",)},
    "qproxy/daemon/systemd.py": {"fast": ("tests/test_daemon_units.py",),
                                 "e2e": ("tests/test_e2e_systemd.py",)},
}
SWAPS = {
    "==": "!=", "!=": "==", "<": "<=", "<=": "<", ">": ">=", ">=": ">",
    "+": "-", "-": "+", "*": "//", "+=": "-=", "-=": "+=",
    "and": "or", "or": "and", "True": "False", "False": "True",
    "break": "continue", "continue": "break",
}
# Lines whose mutation says nothing about behaviour: logging and metrics calls, messages.
QUIET = re.compile(r"\b(log|logger|logging|metrics|warnings)\.|__repr__|raise .*Error\(")
COPY_IGNORE = shutil.ignore_patterns(".venv", ".git", "run", "mutants", "__pycache__",
                                     ".pytest_cache", "*.egg-info", ".hypothesis")


@dataclass(frozen=True)
class Mutant:
    path: str  # relative to the tree
    line: int  # 1-based
    original: str
    mutated: str

    def describe(self) -> str:
        return f"{self.path}:{self.line}: {self.original.strip()}  ->  {self.mutated.strip()}"


def _docstring_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    return lines


def _dropped_statements(tree: ast.AST) -> dict[int, ast.stmt]:
    """Single-line call statements (`self._arm_timer()`) that can be replaced by `pass`."""
    found = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Expr) and isinstance(node.value, (ast.Call, ast.Await))
                and node.lineno == node.end_lineno):
            found[node.lineno] = node
    return found


def mutants_of(path: Path, tree_root: Path) -> list[Mutant]:
    source = path.read_text()
    lines = source.splitlines(keepends=True)
    tree = ast.parse(source)
    skip = _docstring_lines(tree)
    rel = str(path.relative_to(tree_root))
    out: list[Mutant] = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        row, col = token.start
        if (row > len(lines) or row in skip or token.start[0] != token.end[0]
                or QUIET.search(lines[row - 1])):
            continue
        line = lines[row - 1]
        replacement = None
        if token.type in (tokenize.OP, tokenize.NAME) and token.string in SWAPS:
            replacement = SWAPS[token.string]
        elif token.type == tokenize.NAME and token.string == "not" and not line[
                token.end[1]:].startswith(" in"):
            replacement = ""  # `not x` -> `x`
        elif token.type == tokenize.NUMBER and re.fullmatch(r"\d+", token.string):
            replacement = str(int(token.string) + 1)
        if replacement is None:
            continue
        if token.string in ("-", "+") and line[:col].rstrip().endswith(("(", "=", ",", "[")):
            continue  # a sign, not an operation
        end = token.end[1] + (1 if replacement == "" else 0)  # `not ` with its space
        mutated = line[:col] + replacement + line[end:]
        out.append(Mutant(rel, row, line, mutated))
    for row, node in _dropped_statements(tree).items():
        line = lines[row - 1]
        if row in skip or QUIET.search(line):
            continue
        indent = line[: len(line) - len(line.lstrip())]
        out.append(Mutant(rel, row, line, f"{indent}pass  # dropped: {line.strip()}\n"))
    # A mutant must still compile: the test run would report a syntax error, not a test.
    valid = []
    for mutant in out:
        candidate = lines[: mutant.line - 1] + [mutant.mutated] + lines[mutant.line:]
        try:
            compile("".join(candidate), rel, "exec")
        except SyntaxError:
            continue
        valid.append(mutant)
    return valid


def tests_for(module: str, tree_root: Path, e2e: bool) -> list[str]:
    dotted = module.removesuffix(".py").replace("/", ".")
    package, _, name = dotted.rpartition(".")
    pattern = re.compile(rf"\b{re.escape(dotted)}\b|from {re.escape(package)} import [^\n]*"
                         rf"\b{re.escape(name)}\b")
    found = {str(p.relative_to(tree_root)) for p in sorted((tree_root / "tests").glob("test_*.py"))
             if not p.name.startswith("test_e2e_") and pattern.search(p.read_text())}
    named = TESTS.get(module, {})
    found.update(named.get("fast", ()))
    if e2e:
        found.update(named.get("e2e", ()))
    return sorted(f for f in found if (tree_root / f).exists())


def run_tests(copy: Path, tests: list[str], timeout: float, extra: list[str]
              ) -> tuple[str, float, str]:
    """("passed" | "failed" | "timeout", seconds, the end of pytest's output)."""
    started = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
             *extra, *tests], cwd=copy, capture_output=True, timeout=timeout,
            env={**os.environ, "PYTHONPATH": str(copy),
                 "HYPOTHESIS_PROFILE": "fast"})
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - started, ""
    elapsed = time.monotonic() - started
    tail = "\n".join(result.stdout.decode(errors="replace").splitlines()[-15:])
    return ("passed" if result.returncode == 0 else "failed"), elapsed, tail


def expand(paths: list[str]) -> list[str]:
    modules = []
    for entry in paths:
        target = ROOT / entry
        if target.is_dir():
            modules += [str(p.relative_to(ROOT)) for p in sorted(target.glob("*.py"))
                        if p.name != "__init__.py"]
        elif target.exists():
            modules.append(entry)
        else:
            raise SystemExit(f"mutate: {entry}: no such file or directory")
    return modules


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", default=list(DEFAULT_PATHS))
    parser.add_argument("--max-mutants", type=int, default=60)
    parser.add_argument("--budget", type=float, default=900.0, help="seconds for the whole run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--e2e", action="store_true", help="also the end-to-end tests in TESTS")
    parser.add_argument("--pytest-args", default="", help="added to every pytest run, e.g. "
                        "-k 'not logrotate' to leave out a test that is flaky on its own")
    args = parser.parse_args(argv)
    extra = shlex.split(args.pytest_args)
    deadline = time.monotonic() + args.budget

    with tempfile.TemporaryDirectory(prefix="qproxy-mutate-") as tmp:
        copy = Path(tmp) / "tree"
        shutil.copytree(ROOT, copy, ignore=COPY_IGNORE)
        plan: dict[str, tuple[list[str], list[Mutant]]] = {}
        for module in expand(args.paths):
            tests = tests_for(module, copy, args.e2e)
            if not tests:
                print(f"{module}: no fast test names it (try --e2e): not mutated")
                continue
            plan[module] = (tests, mutants_of(copy / module, copy))
        everything = [m for _, mutants in plan.values() for m in mutants]
        chosen = everything
        if len(everything) > args.max_mutants:
            chosen = random.Random(args.seed).sample(everything, args.max_mutants)
        chosen.sort(key=lambda m: (m.path, m.line))
        print(f"{len(everything)} mutants in {len(plan)} modules; running {len(chosen)} "
              f"(seed {args.seed}, budget {args.budget:.0f} s)", flush=True)

        baseline: dict[str, float] = {}
        survivors: list[Mutant] = []
        counts = {"killed": 0, "timeout": 0, "survived": 0, "not run": 0}
        for index, mutant in enumerate(chosen, 1):
            if index % 10 == 0:
                print(f"[{index}/{len(chosen)}] {counts}", flush=True)
            tests = plan[mutant.path][0]
            if mutant.path not in baseline:
                outcome, seconds, tail = run_tests(copy, tests, max(60.0, args.budget / 4),
                                                   extra)
                if outcome != "passed":
                    print(f"{mutant.path}: its tests {outcome} on the unmutated code "
                          f"({' '.join(tests)}): fix them first\n{tail}", file=sys.stderr)
                    return 1
                baseline[mutant.path] = seconds
                print(f"{mutant.path}: {' '.join(tests)} pass in {seconds:.1f} s", flush=True)
            if time.monotonic() + baseline[mutant.path] > deadline:
                counts["not run"] += 1
                continue
            target = copy / mutant.path
            original = target.read_text()
            lines = original.splitlines(keepends=True)
            target.write_text("".join(lines[: mutant.line - 1] + [mutant.mutated]
                                      + lines[mutant.line:]))
            try:
                outcome, _, _ = run_tests(copy, tests, 3 * baseline[mutant.path] + 10, extra)
            finally:
                target.write_text(original)
            if outcome == "passed":
                counts["survived"] += 1
                survivors.append(mutant)
                print(f"SURVIVED  {mutant.describe()}", flush=True)
            else:
                counts["killed" if outcome == "failed" else "timeout"] += 1

    print("\n" + ", ".join(f"{v} {k}" for k, v in counts.items()))
    if survivors:
        print("Surviving mutants (no test failed with this line changed):")
        for mutant in survivors:
            print(f"  {mutant.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
