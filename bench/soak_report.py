"""Report of a bench/soak run: soak.md (figures) and soak.png (RSS and fds over time).

    python soak_report.py SOAK_JSON OUT_DIR

Flatness is judged on the second half of the run (RSS within 5 %, descriptors within 10 % or 4) (the first half includes warm-up: allocator
arenas, connection pools and the session table filling up): growth of RSS and of open fds from
the sample at half time to the last sample.
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> int:
    data = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    # The last sample is taken after the load stopped: flatness is judged on the others.
    after = [s for s in data["samples"] if s.get("after")]
    samples = [s for s in data["samples"] if not s.get("after")]
    t0 = samples[0]["t"]
    ts = [(s["t"] - t0) / 60 for s in samples]
    rss = [s["rss_kib"] / 1024 for s in samples]
    fds = [s["fds"] for s in samples]
    half = samples[len(samples) // 2]
    last = samples[-1]
    rss_growth = (last["rss_kib"] - half["rss_kib"]) / half["rss_kib"] * 100
    fd_growth = last["fds"] - half["fds"]
    stats = data["stats"]
    errors = sum(stats.get("errors", {}).values())
    shortened = data["minutes"] < 30
    # Descriptors follow the load (streams and connections open at the sampling instant), so a
    # few either way is noise; a leak grows with time.
    fd_slack = max(4, half["fds"] // 10)
    flat = abs(rss_growth) < 5 and fd_growth <= fd_slack
    lines = [
        "# Soak results",
        "",
        f"- date {data['date']}, commit `{data['commit']}`, {data['cores']} cores, load average "
        f"{data['load_after']} at the end",
        f"- command: `{data['command']}`: {data['minutes']} min requested, {data['seconds']} s run"
        + ("; SHORTENED: the full soak is 30 minutes" if shortened else ""),
        f"- binary: `{data['binary']}`",
        f"- load: {data['workers']} workers; each loops initialize, an open GET stream, 50 tool "
        "calls alternating JSON and SSE replies (every reply checked), DELETE",
        "- tokens: client_credentials from oidc-provider, 4 s lifetime, refreshed 2 s ahead; the "
        "upstream validates each against the IdP's JWKS",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| tool calls answered correctly (JSON / SSE) | {stats['calls']} ({stats['json_calls']} / {stats['sse_calls']}) |",
        f"| sessions (re-inits) | {stats['sessions']} |",
        f"| GET streams opened / events read on them | {stats['streams']} / {stats['stream_events']} |",
        f"| access tokens issued (rotations) | {data['tokens_issued']} |",
        f"| errors | {errors}{' ' + json.dumps(stats['errors']) if errors else ''} |",
        f"| RSS start / half time / end / max | {rss[0]:.1f} / {half['rss_kib'] / 1024:.1f} / {rss[-1]:.1f} / {max(rss):.1f} MiB |",
        f"| open fds start / half time / end / max | {fds[0]} / {half['fds']} / {fds[-1]} / {max(fds)} |",
        f"| second half: RSS growth, fd growth | {rss_growth:+.1f} %, {fd_growth:+d} |",
    ]
    if after:
        lines.append(f"| after the load stopped: RSS, open fds | {after[-1]['rss_kib'] / 1024:.1f} MiB, {after[-1]['fds']} |")
    lines += [
        f"| verdict (flat: RSS within 5 %, fds within {fd_slack}, 0 errors) | {'met' if flat and errors == 0 else 'MISSED'} |",
        "",
        "![RSS and open fds over time](soak.png)",
        "",
    ]
    if stats.get("first_errors"):
        lines += ["First errors:", ""] + [f"- {e}" for e in stats["first_errors"]] + [""]
    (out / "soak.md").write_text("\n".join(lines))
    print("\n".join(lines))

    fig, ax1 = plt.subplots(figsize=(9, 4.5))
    ax1.plot(ts, rss, color="tab:blue", label="RSS (MiB)")
    ax1.set_xlabel("minutes")
    ax1.set_ylabel("RSS (MiB)", color="tab:blue")
    ax1.set_ylim(bottom=0, top=max(rss) * 1.3)
    ax2 = ax1.twinx()
    ax2.plot(ts, fds, color="tab:orange", label="open fds")
    ax2.set_ylabel("open file descriptors", color="tab:orange")
    ax2.set_ylim(bottom=0, top=max(fds) * 1.3)
    title = f"mcp-sidecar soak: {data['workers']} workers, 4 s tokens, {data['seconds']} s"
    if shortened:
        title += " (shortened)"
    ax1.set_title(title)
    fig.tight_layout()
    fig.savefig(out / "soak.png", dpi=100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
