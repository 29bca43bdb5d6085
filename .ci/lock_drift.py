"""Compare the installed packages with the lock (requirements/lock.txt).

    python .ci/lock_drift.py --check requirements/lock.txt   # exit 1 unless every locked version is installed
    python .ci/lock_drift.py --report requirements/lock.txt  # list what differs (exit 0): the drift

`make install` runs --check after installing from the lock, so a venv that silently took another
version (a stale venv, a package's dependency resolved elsewhere) fails at set-up, not in a test.
`make test-latest` runs --report, so its output names the versions that a failure came with.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: str) -> dict[str, str]:
    """Package -> version of every pin in a lock file (``name==version`` at the start of a line)."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = PIN.match(line)
            if m:
                out[canonical(m.group(1))] = m.group(2)
    if not out:
        sys.exit(f"{path}: no pinned packages found; regenerate it with `make lock`")
    return out


def installed() -> dict[str, str]:
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def drift(lock: dict[str, str], have: dict[str, str]) -> list[tuple[str, str, str]]:
    """(package, locked version, installed version or 'missing') for every pin that is not installed."""
    return [(n, v, have.get(n, "missing")) for n, v in sorted(lock.items()) if have.get(n) != v]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", metavar="LOCK", help="fail unless every locked version is installed")
    mode.add_argument("--report", metavar="LOCK", help="list the installed versions that differ from the lock")
    args = ap.parse_args()
    path = args.check or args.report
    have = installed()
    rows = drift(locked(path), have)
    if args.check:
        if rows:
            print(f"the venv does not match {path}:", file=sys.stderr)
            for n, want, got in rows:
                print(f"  {n}: locked {want}, installed {got}", file=sys.stderr)
            print("fix: `make clean-venv` and run the make target again", file=sys.stderr)
            return 1
        print(f"venv matches {path} ({len(have)} packages; torch {have.get('torch', 'missing')})")
        return 0
    print(f"versions that differ from {path} ({len(rows)}):")
    for n, want, got in rows:
        print(f"  {n}: locked {want} -> installed {got}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
