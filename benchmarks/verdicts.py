"""From a run's tables to what is said about them: the targets table of RESULTS.md and the
README's performance table. Both are computed from the markdown of the run (the tables as
written), so the README can be checked against RESULTS.md at any time."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
README = Path(__file__).resolve().parents[1] / "README.md"
MEMORY_HEADING = "### Memory, each scenario in fresh servers (1 worker)"
ONE_WORKER = "### 1 worker(s)"
README_HEADER = "| scenario | qtls-server | nginx | bound |\n|---|---|---|---|"

PER_CPU = r"per CPU-second ([\d,]+)"
Cells = list[str]  # one markdown row: scenario, unit, ours, peer, ratio, bound, ratio, note
Tables = dict[str, dict[str, Cells]]  # heading -> scenario -> cells


def newest_run(results: str) -> str:
    """The newest run's section of RESULTS.md (runs are `## ` sections, newest first)."""
    start = results.find("\n## ")
    if start < 0:
        return ""
    end = results.find("\n## ", start + 1)
    return results[start + 1: end if end >= 0 else None]


def parse_tables(section: str) -> Tables:
    tables: Tables = {}
    heading = ""
    for line in section.splitlines():
        if line.startswith("### "):
            heading = line.strip()
            tables[heading] = {}
        elif heading and line.startswith("| ") and not line.startswith("| scenario"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 8:
                tables[heading][cells[0]] = cells
    return tables


def median(cell: str) -> float | None:
    """`1,234 ± 56` -> 1234.0; `—` -> None."""
    match = re.match(r"-?[\d,]+(\.\d+)?", cell.replace("−", "-"))
    return float(match.group(0).replace(",", "")) if match else None


def from_note(cells: Cells, pattern: str) -> float | None:
    match = re.search(pattern, cells[7])
    return float(match.group(1).replace(",", "")) if match else None


def find(table: dict[str, Cells], prefix: str, suffix: str = "") -> Cells | None:
    for scenario, cells in table.items():
        if scenario.startswith(prefix) and scenario.endswith(suffix):
            return cells
    return None


def ratio(cells: Cells | None) -> float | None:
    if cells is None:
        return None
    ours, peer = median(cells[2]), median(cells[3])
    return ours / peer if ours is not None and peer else None


@dataclass(frozen=True)
class Verdict:
    text: str  # what this run measured
    met: bool | None  # None: not measured, or no target (informational)
    why: str = ""


@dataclass(frozen=True)
class Target:
    name: str  # also how the previous run's figure is found
    judge: Callable[[Tables], Verdict]


NOT_MEASURED = Verdict("not measured", None)


def _pq_bound(tables: Tables) -> Verdict:
    cells = find(tables.get(ONE_WORKER, {}), "full handshakes: X25519MLKEM768 + ML-DSA-65")
    if cells is None or median(cells[5]) is None:
        return NOT_MEASURED
    per_cpu, bound = from_note(cells, PER_CPU), median(cells[5])
    floor = from_note(cells, r"\(([\d,]+)/s in-process\)")
    if per_cpu is None:
        return NOT_MEASURED
    share = per_cpu / bound
    why = f"OpenSSL's own in-process handshake: {floor / bound:.0%} of the bound" if floor else ""
    return Verdict(f"{share:.0%} ({per_cpu:,.0f} per CPU-second vs {bound:,.0f})",
                   share >= 0.85, why)


def _versus_nginx(prefix: str, threshold: float, suffix: str = "") -> Callable[[Tables], Verdict]:
    def judge(tables: Tables) -> Verdict:
        cells = find(tables.get(ONE_WORKER, {}), prefix, suffix)
        share = ratio(cells)
        if share is None:
            return NOT_MEASURED
        text = f"{share:.0%} ({cells[2].split(' ±')[0]} vs {cells[3].split(' ±')[0]})"
        for heading, table in tables.items():
            more = ratio(find(table, prefix, suffix))
            if heading not in (ONE_WORKER, MEMORY_HEADING) and more is not None:
                text += f"; {more:.0%} with {heading.split()[1]} workers"
        return Verdict(text, share >= threshold if threshold else None)
    return judge


def _download(tables: Tables) -> Verdict:
    table = tables.get(ONE_WORKER, {})
    cells = find(table, "1 transfer of", ", download")
    share = ratio(cells)
    if share is None:
        return NOT_MEASURED
    growth = from_note(cells, r"growth ≤ (\d+) MiB")
    streaming = find(table, "1 transfer of", "download, nginx with proxy_buffering off")
    peer = "at its defaults" if "nginx at its defaults" in cells[7] else "with proxy_buffering off"
    text = f"{share:.0%} of nginx {peer}, RSS growth ≤ {growth:.0f} MiB"
    if ratio(streaming) is not None:
        text += f" ({ratio(streaming):.0%} of nginx with proxy_buffering off)"
    return Verdict(text, share >= 0.5 and growth is not None and growth < 64)


def _latency(tables: Tables) -> Verdict:
    cells = find(tables.get(ONE_WORKER, {}), "p50 / p99 latency")
    added = from_note(cells, r"added p99 (-?[\d.]+) ms") if cells else None
    direct = from_note(cells, r"p99 ([\d.]+) direct") if cells else None
    if added is None:
        return NOT_MEASURED
    return Verdict(f"{added:.2f} ms (the direct p99 alone: {direct:.2f} ms)", added < 2.0)


def _idle(tables: Tables) -> Verdict:
    table = tables.get(MEMORY_HEADING, {})
    fresh = find(table, "memory per idle TLS connection, classical, fresh")
    if fresh is None:
        old = find(tables.get(ONE_WORKER, {}), "memory per idle TLS connection (")
        if old is None:
            return NOT_MEASURED
        ours = median(old[2])
        return Verdict(f"{ours:,.0f} B in a worker that ran every other scenario", ours < 24576)
    ours = median(fresh[2])
    text = f"{ours:,.0f} B fresh ({ours / 1024:.1f} KiB)"
    warmed = find(table, "memory per idle TLS connection, classical, warmed")
    pq = find(table, "memory per idle TLS connection, X25519MLKEM768 + ML-DSA-65, fresh")
    if warmed:
        text += f"; {median(warmed[2]):,.0f} B warmed"
    if pq:
        text += f"; post-quantum {median(pq[2]):,.0f} B fresh"
    if median(fresh[3]):
        text += f"; nginx {median(fresh[3]):,.0f} B"
    return Verdict(text, ours < 24 * 1024)


def _memory(prefix: str, unit: str, scale: float) -> Callable[[Tables], Verdict]:
    def judge(tables: Tables) -> Verdict:
        cells = find(tables.get(MEMORY_HEADING, {}), prefix)
        if cells is None or median(cells[2]) is None:
            return NOT_MEASURED
        ours, peer = median(cells[2]) / scale, median(cells[3])
        text = f"{ours:,.1f} {unit}"
        if peer is not None:
            text += f" (nginx {peer / scale:,.1f} {unit})"
        return Verdict(text, None)
    return judge


TARGETS = [
    Target("PQ full handshakes ≥ 85 % of the crypto bound per core", _pq_bound),
    Target("classical full handshakes ≥ 70 % of nginx",
           _versus_nginx("full handshakes: X25519 + ECDSA P-256", 0.70)),
    Target("keep-alive requests ≥ 50 % of nginx", _versus_nginx("keep-alive requests", 0.50)),
    Target("new connection per request ≥ 60 % of nginx",
           _versus_nginx("new connection per request", 0.60)),
    Target("1 GiB download ≥ 50 % of nginx, < 64 MiB RSS growth", _download),
    Target("p99 added latency < 2 ms at half load", _latency),
    Target("idle TLS connection < 24 KiB", _idle),
    Target("resumed handshakes, both classical (no target)",
           _versus_nginx("resumed handshakes (PSK, X25519 both)", 0.0)),
    Target("idle connection after one request (issue 11; no target)",
           _memory("memory per idle connection after one", "KiB", 1024)),
    Target("RSS per slow reader of a 1 MB object (issue 11; no target)",
           _memory("memory per slow reader", "KiB", 1024)),
    Target("worker RSS left after the slow readers (issue 11; no target)",
           _memory("worker RSS left once", "MiB", 1)),
]


def _previous_figures(previous_section: str) -> dict[str, str]:
    figures = {}
    for line in previous_section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) >= 3 and cells[0] != "target":
            figures[cells[0]] = cells[1]
    return figures


def targets_table(tables_markdown: str, previous: str = "") -> str:
    tables = parse_tables(tables_markdown)
    before = _previous_figures(previous)
    lines = ["| target | this run | previous run | verdict |", "|---|---|---|---|"]
    for target in TARGETS:
        verdict = target.judge(tables)
        word = {True: "met", False: "missed", None: "—"}[verdict.met]
        if verdict.why and verdict.met is False:
            word += f": {verdict.why}"
        lines.append(f"| {target.name} | {verdict.text} | {before.get(target.name, '—')} | "
                     f"{word} |")
    return "\n".join(lines)


def _figure(cells: Cells | None, column: int, unit: str = "", scale: float = 1.0,
            digits: int = 0) -> str:
    value = median(cells[column]) if cells else None
    return "—" if value is None else f"{value / scale:,.{digits}f}{unit}"


def readme_table(section: str) -> str:
    """The README's performance table from a run's section of RESULTS.md (1 worker)."""
    tables = parse_tables(section)
    one, mem = tables.get(ONE_WORKER, {}), tables.get(MEMORY_HEADING, {})
    rows: list[tuple[str, str, str, str]] = []

    pq = find(one, "full handshakes: X25519MLKEM768 + ML-DSA-65")
    if pq:
        floor = from_note(pq, r"\(([\d,]+)/s in-process\)")
        per_cpu = from_note(pq, PER_CPU)
        rows.append(("full handshakes X25519MLKEM768 + ML-DSA-65",
                     f"{_figure(pq, 2, '/s')} ({per_cpu:,.0f} per CPU-s)", "—",
                     f"crypto {_figure(pq, 5, '/s')}, OpenSSL {floor:,.0f}/s"))
    classical = find(one, "full handshakes: X25519 + ECDSA P-256")
    if classical:
        nginx_cpu = from_note(classical, r"nginx ([\d,]+) per CPU-second")
        per_cpu = from_note(classical, PER_CPU)
        rows.append(("full handshakes X25519 + ECDSA P-256 (classical)",
                     f"{_figure(classical, 2, '/s')} ({per_cpu:,.0f} per CPU-s)",
                     f"{_figure(classical, 3, '/s')} ({nginx_cpu:,.0f} per CPU-s)"
                     if nginx_cpu else _figure(classical, 3, "/s"),
                     f"crypto {_figure(classical, 5, '/s')}"))
    for prefix, label in (("resumed handshakes (PSK, X25519 both)",
                           "resumed handshakes, both classical"),
                          ("resumed handshakes (PSK, ours X25519MLKEM768",
                           "resumed handshakes, ours X25519MLKEM768 (nginx classical)"),
                          ("resumed handshakes (PSK, X25519MLKEM768)",  # runs before 11/2026
                           "resumed handshakes, ours X25519MLKEM768 (nginx classical)"),
                          ("new connection per request", "new connection per request"),
                          ("keep-alive requests", "keep-alive requests, 64 connections")):
        cells = find(one, prefix)
        if cells:
            rows.append((label, _figure(cells, 2, "/s"), _figure(cells, 3, "/s"), "—"))
    latency = find(one, "p50 / p99 latency")
    added = from_note(latency, r"added p99 (-?[\d.]+) ms") if latency else None
    if added is not None:
        rows.append(("added p99 latency at half load", f"{added:.2f} ms", "—", "—"))
    down, up = find(one, "1 transfer of", ", download"), find(one, "1 transfer of", ", upload")
    streaming = find(one, "1 transfer of", "download, nginx with proxy_buffering off")
    if down and up:
        size = down[0].removeprefix("1 transfer of ").removesuffix(", download")
        peer = f"{_figure(down, 3)} / {_figure(up, 3)} MB/s"
        if streaming:
            peer += f" (download with proxy_buffering off: {_figure(streaming, 3)})"
        peer_kind = ("at its defaults" if "nginx at its defaults" in down[7]
                     else "with proxy_buffering off")
        rows.append((f"{size} download / upload (nginx {peer_kind})",
                     f"{_figure(down, 2)} / {_figure(up, 2)} MB/s", peer, "—"))
    for prefix, label in (("memory per idle TLS connection, classical",
                           "memory per idle TLS connection, fresh / warmed worker"),
                          ("memory per idle TLS connection, X25519MLKEM768",
                           "the same, X25519MLKEM768 + ML-DSA-65")):
        fresh = next((c for s, c in mem.items() if s.startswith(prefix) and "fresh" in s), None)
        warmed = next((c for s, c in mem.items() if s.startswith(prefix) and "warmed" in s), None)
        if fresh and warmed:
            peer = (f"{_figure(fresh, 3, ' KB', 1000, 1)} / {_figure(warmed, 3, ' KB', 1000, 1)}"
                    if median(fresh[3]) else "—")
            rows.append((label, f"{_figure(fresh, 2, ' KB', 1000, 1)} / "
                                f"{_figure(warmed, 2, ' KB', 1000, 1)}", peer, "—"))
    for prefix, label, unit, scale in (
            ("memory per idle connection after one", "memory per idle connection after one "
             "request", " KB", 1000),
            ("memory per slow reader", "memory per slow reader of a 1 MB object", " KB", 1000),
            ("worker RSS left once", "worker RSS left after the slow readers", " MiB", 1)):
        cells = find(mem, prefix)
        if cells:
            rows.append((label, _figure(cells, 2, unit, scale, 1),
                         _figure(cells, 3, unit, scale, 1), "—"))
    # Before the memory table existed the idle row was in the 1-worker table.
    old_idle = find(one, "memory per idle TLS connection (")
    if old_idle and not mem:
        rows.append(("memory per idle TLS connection (worker that ran every scenario)",
                     _figure(old_idle, 2, " KB", 1000, 1), _figure(old_idle, 3, " KB", 1000, 1),
                     "—"))
    return "\n".join([README_HEADER, *(f"| {' | '.join(r)} |" for r in rows)])


def replace_readme_table(readme: str, table: str) -> str:
    """The README with its performance table (the first table under `## Performance`)
    replaced."""
    section = readme.index("\n## Performance")
    start = readme.index("\n| scenario |", section) + 1
    end = start
    while end < len(readme) and readme.startswith("|", end):
        end = readme.index("\n", end) + 1
    return readme[:start] + table + "\n" + readme[end:]


def write(report: str) -> None:
    """Prepend the run to RESULTS.md (newest first, after the title and explanations) and
    rewrite the README's table from it."""
    previous = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    cut = previous.find("\n## ")
    head, rest = (previous, "") if cut < 0 else (previous[:cut + 1], previous[cut + 1:])
    RESULTS.write_text(f"{head.rstrip()}\n\n{report}\n{rest}")
    README.write_text(replace_readme_table(README.read_text(), readme_table(report)))
