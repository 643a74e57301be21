"""Turns `cargo bloat --crates --message-format json` (stdin) into bench/size's crate table rows."""

import json
import sys

data = json.load(sys.stdin)
text = data["text-section-size"]
for crate in data["crates"]:
    print(f"| {crate['name']} | {crate['size']:,} | {100 * crate['size'] / text:.1f} % |")
print(f"| (all, in a {data['file-size']:,}-byte unstripped file) | {text:,} | 100 % |")
