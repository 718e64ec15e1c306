"""The lock of the tested stack (``requirements.lock``): write it, or compare a venv with it.

    python scripts/lock.py write requirements.lock   # from the running venv (see `make lock`)
    python scripts/lock.py drift requirements.lock   # what the running venv has that differs

The lock holds every installed distribution except this package, as ``name==version``, sorted.
Local version labels are dropped (``torch==2.13.0+cpu`` -> ``torch==2.13.0``) so the constraint
also admits the same release built for another accelerator.
"""

from __future__ import annotations

import sys
from importlib.metadata import distributions
from pathlib import Path

SKIP = {"lens-oracle", "pip", "setuptools", "wheel"}
HEADER = """\
# The tested stack: exact versions of every direct and transitive dependency of lens-oracle[dev].
# Installs use it as a pip constraints file (`make install`, `make test`, `make example`, .ci/run).
# Regenerate with `make lock` (a fresh venv with the newest versions pyproject.toml allows),
# then run `make test` before committing it.
"""


def installed() -> dict[str, str]:
    found = {}
    for dist in distributions():
        name = dist.metadata["Name"].lower().replace("_", "-")
        if name not in SKIP:
            found[name] = dist.version.split("+", 1)[0]
    return found


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower()] = version
    return pins


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("write", "drift"):
        print(__doc__, file=sys.stderr)
        return 2
    command, path = argv[0], Path(argv[1])
    if command == "write":
        pins = installed()
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(HEADER + "".join(f"{name}=={pins[name]}\n" for name in sorted(pins)))
        tmp.replace(path)
        print(f"wrote {len(pins)} pins to {path}")
        return 0
    lock, have = read_lock(path), installed()
    changed = [f"{name} {lock[name]} -> {have[name]}" for name in sorted(lock) if name in have and have[name] != lock[name]]
    added = [f"{name} {have[name]} (not in the lock)" for name in sorted(have) if name not in lock]
    print("drift from the lock: " + ("; ".join(changed + added) if changed or added else "none (the newest versions are the locked ones)"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
