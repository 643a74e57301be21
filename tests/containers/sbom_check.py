"""The SBOM lists exactly the crates the binary links, by name and version.

    python3 tests/containers/sbom_check.py SBOM.cdx.json TRIPLE

SBOM is the CycloneDX JSON that .ci/release-build wrote beside the binary (cargo-cyclonedx).
The crates the binary links come from Cargo.lock through cargo itself: `cargo tree` with normal
dependency edges only, on TRIPLE, without proc macros (they run in the compiler and link
nothing). Both sets must be equal; the counts are printed. Exits 1 naming every crate that is
in one and not in the other.
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def sbom_crates(bom):
    """(name, version) of the described crate and of every component (crate) it lists. The
    described crate's own sub-components are its cargo targets (bin, lib), not crates."""
    root = bom.get("metadata", {}).get("component")
    found = {(root["name"], root["version"])} if root else set()
    return found | {(c["name"], c["version"]) for c in bom.get("components", [])}


def linked_crates(triple):
    out = subprocess.run(
        ["cargo", "tree", "--locked", "--edges", "normal,no-proc-macro", "--target", triple,
         "--prefix", "none", "--format", "{p}"],
        cwd=ROOT, check=True, capture_output=True, text=True).stdout
    found = set()
    for line in out.splitlines():
        # "name v1.2.3", "name v1.2.3 (/path)" for the package itself, "(*)" on repeats
        words = line.split()
        if len(words) >= 2 and words[1].startswith("v"):
            found.add((words[0], words[1][1:]))
    return found


def main():
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 64
    bom = json.loads(Path(sys.argv[1]).read_text())
    if bom.get("bomFormat") != "CycloneDX":
        print(f"sbom_check: {sys.argv[1]} is not a CycloneDX document", file=sys.stderr)
        return 1
    listed, linked = sbom_crates(bom), linked_crates(sys.argv[2])
    print(f"sbom_check: CycloneDX {bom.get('specVersion')}: {len(listed)} crates listed; "
          f"cargo tree ({sys.argv[2]}, normal edges, no proc macros): {len(linked)} crates")
    ok = True
    for name, version in sorted(linked - listed):
        print(f"sbom_check: linked but not in the SBOM: {name} {version}", file=sys.stderr)
        ok = False
    for name, version in sorted(listed - linked):
        print(f"sbom_check: in the SBOM but not linked: {name} {version}", file=sys.stderr)
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
