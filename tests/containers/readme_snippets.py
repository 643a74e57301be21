"""Check that the README's container snippets are the tested files, so copy-paste gets what CI ran.

A fenced block right after one of these HTML comments is checked:
  <!-- file: PATH -->      the block is the whole file
  <!-- quote: PATH -->     the block is a run of consecutive lines of the file
  <!-- devcontainer.json --> the block is JSON using the feature in devcontainer/src/ with
                             option names that feature declares
Usage: python3 readme_snippets.py README.md  (exit 1 listing every mismatch)
"""

import json
import pathlib
import re
import sys

MARKER = re.compile(r"<!-- (file|quote): (\S+) -->|<!-- (devcontainer\.json) -->")
FENCE = re.compile(r"^```[a-z]*\n(.*?)^```$", re.S | re.M)
# Every integration file must appear in the README at least once.
REQUIRED = {
    "Dockerfile",
    "compose.yaml",
    "entrypoint/mcp-sidecar-gate",
    "k8s/deployment.yaml",
    "k8s/kustomization.yaml",
}


def main(readme_path: str) -> int:
    readme = pathlib.Path(readme_path)
    root = readme.parent
    text = readme.read_text()
    problems, seen = [], set()
    for m in MARKER.finditer(text):
        fence = FENCE.search(text, m.end())
        if not fence or text[m.end() : fence.start()].strip():
            problems.append(f"{m.group(0)}: no fenced block right after it")
            continue
        block = fence.group(1)
        if m.group(3):
            problems += check_devcontainer(root, block)
            continue
        kind, path = m.group(1), m.group(2)
        seen.add(path)
        target = root / path
        if not target.is_file():
            problems.append(f"{path}: no such file")
            continue
        content = target.read_text()
        if kind == "file" and block != content:
            problems.append(f"{path}: the README's copy differs from the file")
        if kind == "quote" and not is_run_of_lines(block, content):
            problems.append(f"{path}: the README's excerpt is not a run of the file's lines")
    for path in sorted(REQUIRED - seen):
        problems.append(f"{path}: not shown in the README")
    for p in problems:
        print(f"README: {p}", file=sys.stderr)
    if not problems:
        print(f"README snippets match: {', '.join(sorted(seen))}, devcontainer.json")
    return 1 if problems else 0


def is_run_of_lines(block: str, content: str) -> bool:
    want, have = block.splitlines(), content.splitlines()
    return bool(want) and any(have[i : i + len(want)] == want for i in range(len(have)))


def check_devcontainer(root: pathlib.Path, block: str) -> list:
    try:
        config = json.loads(block)
    except json.JSONDecodeError as e:
        return [f"devcontainer.json snippet is not JSON: {e}"]
    problems = []
    features = {k: v for k, v in config.get("features", {}).items() if "mcp-sidecar" in k}
    if not features:
        problems.append("devcontainer.json snippet uses no mcp-sidecar feature")
    declared = json.loads(
        (root / "devcontainer/src/mcp-sidecar/devcontainer-feature.json").read_text()
    )["options"]
    for options in features.values():
        for name in options:
            if name not in declared:
                problems.append(f"feature option {name}: not declared in devcontainer-feature.json")
    return problems


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
