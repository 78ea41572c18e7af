"""`make run`'s first step: a local copy of the example model with demo keys, and what to type.

The copy (not committed) keeps its plaintext demo keys in a comment, so reruns reuse them.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .auth import hash_key, new_key

__all__ = ["main"]

_KEYS = re.compile(r"^# demo (write|read) key: (\S+)$", re.M)


def local_config(example: Path, out: Path) -> tuple[str, str, str]:
    """Write `out` from `example` with fresh demo keys unless it already has some."""
    if out.exists():
        found = dict(_KEYS.findall(out.read_text()))
        if "write" in found and "read" in found:
            project = re.search(r"^\[projects\.([^.\]]+)\]", out.read_text(), re.M)
            return found["write"], found["read"], project.group(1) if project else "acme"
    text = example.read_text()
    write, read = new_key("write"), new_key("read")
    text = re.sub(r"^write_keys\s*=.*$", f'write_keys = ["{hash_key(write)}"]', text, count=1, flags=re.M)
    text = re.sub(r"^read_keys\s*=.*$", f'read_keys  = ["{hash_key(read)}"]', text, count=1, flags=re.M)
    header = (
        f"# Local demo copy of {example.name}, written by `make run`; not committed.\n"
        f"# demo write key: {write}\n# demo read key: {read}\n\n"
    )
    out.write_text(header + text)
    project = re.search(r"^\[projects\.([^.\]]+)\]", text, re.M)
    return write, read, project.group(1) if project else "acme"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m headway_collector.demo")
    p.add_argument("--example", default="headway.example.toml")
    p.add_argument("--out", default="headway.local.toml")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    args = p.parse_args(argv)
    write, read, project = local_config(Path(args.example), Path(args.out))
    url = f"http://{args.host}:{args.port}"
    now = '"$(date -u +%Y-%m-%dT%H:%M:%SZ)"'
    body = (
        '{"sent_at":"\'' + now + '\'","events":[{"id":"demo-\'"$(date +%s%N)"\'","event":"report_shared",'
        '"user_id":"alice","account_id":"acme-co","timestamp":"\'' + now + "'\"}]}"
    )
    print(
        f"""
Headway collector starting at {url}  (project {project!r}, config {args.out}, database headway.db)
  write key: {write}
  read key:  {read}
  dashboard: {url}/#key={read}
  health: {url}/healthz   API schema: {url}/openapi.json   metrics (read key): {url}/metrics

Send an event:
  curl -s {url}/v1/batch -H 'Authorization: Bearer {write}' -H 'Content-Type: application/json' -d '{body}'
Read it back:
  curl -s {url}/v1/users/alice -H 'Authorization: Bearer {read}'
""",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
