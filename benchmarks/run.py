"""`make bench`: run every benchmark script in `benchmarks/`, one subprocess each.

A benchmark is a module `benchmarks/NAME.py` with a top-level `main()`; `run.py` and modules
whose name starts with `_` (shared helpers) are not. Each gets the options given here after
the runner's own (`--quick` for small sizes), so every `main()` takes `--quick`. A failing
script does not stop the others; the exit code says whether all passed.

    python -m benchmarks.run [--quick] [--only ingest,rescore] [--list]
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover() -> list[str]:
    """Benchmark module names, in name order (found by reading, not importing, each file)."""
    names = []
    for path in sorted(HERE.glob("*.py")):
        if path.name == "run.py" or path.name.startswith("_"):
            continue
        try:
            tree = ast.parse(path.read_text(), str(path))
        except SyntaxError:
            names.append(path.stem)  # let it fail loudly when run
            continue
        if any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == "main" for n in tree.body):
            names.append(path.stem)
    return names


def run_one(name: str, argv: list[str]) -> int:
    """Import `benchmarks.NAME` and call its `main`, with `argv` if it takes arguments."""
    module = importlib.import_module(f"benchmarks.{name}")
    main = module.main
    sys.argv = [str(HERE / f"{name}.py"), *argv]
    result = main(argv) if inspect.signature(main).parameters else main()
    return int(result or 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--quick", action="store_true", help="small sizes (passed to every benchmark)")
    p.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one benchmark in this process
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.quick:
        rest = ["--quick", *rest]
    if args.one:
        return run_one(args.one, rest)

    names = discover()
    if args.list:
        print("\n".join(names))
        return 0
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        missing = [n for n in wanted if n not in names]
        if missing:
            p.error(f"no benchmark named {', '.join(missing)} (have: {', '.join(names)})")
        names = wanted

    summary = []
    for name in names:
        print(f"=== {name} {' '.join(rest)}".rstrip(), flush=True)
        started = time.monotonic()
        rc = subprocess.call([sys.executable, "-m", "benchmarks.run", "--one", name, *rest], cwd=HERE.parent)
        summary.append((name, rc, time.monotonic() - started))
        print(flush=True)
    print("benchmark            result   seconds")
    for name, rc, took in summary:
        print(f"{name:20s} {'ok' if rc == 0 else f'FAILED ({rc})':8s} {took:7.1f}")
    return 0 if all(rc == 0 for _, rc, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
