"""``make bench``: run every benchmark under bench/ and rewrite docs/benchmarks.md with the results.

    uv run python bench/run_all.py                       # full runs, rewrites docs/benchmarks.md
    uv run python bench/run_all.py --quick --output /tmp/benchmarks.md   # a smoke run elsewhere
    uv run python bench/run_all.py --only trainer api    # some packages only

Each benchmark is a script that prints its results (Markdown tables) at the end of its output.
This runs them one after the other (they would disturb each other's figures), keeps each one's
full output under ``var/bench/run_all/``, and writes the file: the machine (cores, memory, CPU
model, load, date, commit) at the top, and in each package's ``## <Package>`` section a
generated block with the exact command, its exit code and duration, and the results it printed.
What the package's engineers wrote in their section (the analysis, the goals) is kept as it is:
only the generated blocks are replaced, so a run never erases a section's prose. A script with
a ``__main__`` entry that is not listed in ``BENCHES`` is reported, so none is forgotten.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
RESULTS = REPO / "var" / "bench" / "run_all"
HELPERS = {"bench/api/bare.py"}  # served by bench/api/run.py, not a benchmark itself
BEGIN = "<!-- bench/run_all.py: begin (generated; edit the prose outside this block) -->"
END = "<!-- bench/run_all.py: end -->"
MACHINE_BEGIN = "<!-- bench/run_all.py: machine -->"
MACHINE_END = "<!-- bench/run_all.py: machine end -->"
TABLE_ROW = re.compile(r"^\|.*\|\s*$")


@dataclass(frozen=True)
class Bench:
    """One benchmark script: its section, and its arguments for a full and a quick run."""

    section: str
    script: str
    full: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()
    needs_kube: bool = False

    @property
    def key(self) -> str:
        return self.section.lower()

    def command(self, *, quick: bool, scratch: Path) -> list[str]:
        args = self.quick if quick else self.full
        return [a.replace("{scratch}", str(scratch)) for a in (self.script, *args)]


BENCHES = (
    Bench("Trainer", "bench/trainer/train_bench.py", quick=("--sizes", "100000")),
    Bench("Trainer", "bench/trainer/read_bench.py", quick=("--rows", "100000", "--repeat", "1")),
    Bench(
        "Worker",
        "bench/worker/throughput.py",
        quick=(
            "--items", "10000", "--rates", "500", "--duration", "5", "--backlog", "5000",
            "--output", "{scratch}/worker-throughput.json",
        ),
    ),
    Bench(
        "Worker",
        "bench/worker/elastic.py",
        full=("--output", "{scratch}/worker-elastic.json"),
        quick=("--phase-s", "5", "--settle-s", "2", "--output", "{scratch}/worker-elastic.json"),
    ),
    Bench(
        "Worker",
        "bench/worker/memory.py",
        full=("--output", "{scratch}/worker-memory.json"),
        quick=(
            "--full-users", "50", "--one-event-users", "200",
            "--output", "{scratch}/worker-memory.json",
        ),
    ),
    Bench(
        "Worker",
        "bench/worker/replay_lift.py",
        quick=("--interactions", "30000", "--output", "{scratch}/worker-replay.json"),
    ),
    Bench(
        "Worker",
        "bench/worker/fencing.py",
        full=("--rounds", "3", "--batches", "40"),
        quick=("--rounds", "1", "--batches", "5"),
    ),
    Bench(
        "Worker",
        "bench/worker/rebuild.py",
        full=("--events", "1000000", "--users", "100000"),
        quick=("--events", "20000", "--users", "2000"),
    ),
    Bench(
        "API",
        "bench/api/run.py",
        full=("--rounds", "3", "--duration", "8", "--connections", "32"),
        quick=("--rounds", "1", "--duration", "3"),
    ),
    Bench("API", "bench/api/overhead.py", full=("--rounds", "5"), quick=("--rounds", "1")),
    Bench("Contracts", "bench/codec/codec.py", full=("--rounds", "5"), quick=("--number", "2000")),
    Bench(
        "Controller",
        "bench/controller/rollout_latency.py",
        full=("--rounds", "20", "--replicas", "2"),
        quick=("--rounds", "3"),
        needs_kube=True,
    ),
)  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    bench: Bench
    command: str
    code: int | None  # None: not run
    seconds: float
    results: str
    note: str = ""


# --------------------------------------------------------------------------- the machine


def machine() -> str:
    """Cores, memory, CPU model, load, OS, Python, date and commit, as one Markdown list."""
    cpu = _first(Path("/proc/cpuinfo"), "model name") or platform.processor() or "unknown"
    mem_kib = int((_first(Path("/proc/meminfo"), "MemTotal") or "0 kB").split()[0])
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = (
        " (with uncommitted changes)"
        if _git("status", "--porcelain", "--", "services", "libs")
        else ""
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return "\n".join(
        [
            f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, commit {commit}{dirty}",
            f"- {len(os.sched_getaffinity(0))} cores (`nproc`), {mem_kib / 2**20:.1f} GiB memory, {cpu}",
            f"- {platform.platform()}, Python {platform.python_version()}",
            f"- load average at the start: {load} (other builds may share the machine)",
        ]
    )


def _first(path: Path, field: str) -> str | None:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, value = line.partition(":")
        if name.strip() == field:
            return value.strip()
    return None


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    return done.stdout.strip()


# --------------------------------------------------------------------------- running


def kube_ready() -> str | None:
    """``None`` when the local control plane runs (started if needed), else why not."""
    kube = REPO / "scripts" / "kube.sh"
    if subprocess.run([kube, "status"], capture_output=True, check=False).returncode == 0:
        return None
    try:
        up = subprocess.run([kube, "up"], capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        return "the local control plane did not start within 30 min"
    return None if up.returncode == 0 else f"scripts/kube.sh up failed: {up.stderr[-300:]}"


def run(bench: Bench, *, quick: bool, scratch: Path, timeout_s: float) -> Outcome:
    argv = bench.command(quick=quick, scratch=scratch)
    shown = "uv run python " + shlex.join(argv)
    if bench.needs_kube and (why := kube_ready()) is not None:
        return Outcome(bench, shown, None, 0.0, "", note=f"not run: {why}")
    print(f"\n=== {shown}", flush=True)
    log = RESULTS / f"{Path(bench.script).stem}.out"
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, *argv],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        code, out, err = (
            -1,
            _text(exc.stdout),
            _text(exc.stderr) + f"\ntimed out after {timeout_s:.0f} s",
        )
    seconds = time.monotonic() - started
    log.write_text(f"$ {shown}\n\n{out}\n--- stderr\n{err}")
    print(out[-2000:], flush=True)
    note = "" if code == 0 else f"failed (exit {code}): {err.strip()[-500:]}"
    return Outcome(bench, shown, code, seconds, results_of(out), note)


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else data or ""


def results_of(output: str) -> str:
    """The summary a benchmark printed last: from its first table (and that table's one-line
    caption) to the end of its output; JSON progress lines are left out."""
    lines = [line.rstrip() for line in output.splitlines() if not line.lstrip().startswith("{")]
    paragraphs: list[list[str]] = [[]]
    for line in lines:
        if line.strip():
            paragraphs[-1].append(line)
        elif paragraphs[-1]:
            paragraphs.append([])
    first = next(
        (i for i, p in enumerate(paragraphs) if any(TABLE_ROW.match(line) for line in p)), None
    )
    if first is None:
        return ""
    if first > 0 and len(paragraphs[first - 1]) == 1:
        first -= 1  # the table's caption
    return "\n\n".join(_separate_tables(p) for p in paragraphs[first:] if p)


def _separate_tables(paragraph: list[str]) -> str:
    """A blank line between text and a table, which Markdown needs to see the table."""
    out: list[str] = []
    for line in paragraph:
        if out and bool(TABLE_ROW.match(line)) != bool(TABLE_ROW.match(out[-1])):
            out.append("")
        out.append(line)
    return "\n".join(out)


# --------------------------------------------------------------------------- the document


def block(outcomes: Sequence[Outcome], *, quick: bool) -> str:
    mode = "quick mode: smoke figures only, not for comparison" if quick else "full run"
    parts = [BEGIN, f"### Latest `make bench`: {mode}", ""]
    for outcome in outcomes:
        parts.append(f"```\n{outcome.command}\n```")
        if outcome.code is None:
            parts.append(f"*{outcome.note}*")
        else:
            status = "exit 0" if outcome.code == 0 else f"**{outcome.note}**"
            parts.append(f"*{status}, {outcome.seconds:.0f} s*")
        if outcome.results:
            parts.append(outcome.results)
        parts.append("")
    parts.append(END)
    return "\n\n".join(p for p in parts if p != "") + "\n"


def rewrite(document: str, sections: dict[str, str], machine_text: str) -> str:
    """``document`` with the machine block under the title and each section's block replaced
    (or appended to the section; a missing section is created at the end)."""
    machine_block = (
        f"{MACHINE_BEGIN}\n## Machine of the latest `make bench`\n\n{machine_text}\n{MACHINE_END}\n"
    )
    if MACHINE_BEGIN in document:
        document = _replace_between(document, MACHINE_BEGIN, MACHINE_END, machine_block)
    else:
        head, sep, rest = document.partition("\n## ")
        document = (
            f"{head.rstrip()}\n\n{machine_block}\n{sep.lstrip()}{rest}"
            if sep
            else (f"{document.rstrip()}\n\n{machine_block}")
        )
    for title, generated in sections.items():
        document = _with_section_block(document, title, generated)
    return document.rstrip() + "\n"


def _replace_between(text: str, begin: str, end: str, replacement: str) -> str:
    start = text.index(begin)
    stop = text.index(end, start) + len(end)
    stop += 1 if text[stop : stop + 1] == "\n" else 0
    return text[:start] + replacement + text[stop:]


def _with_section_block(document: str, title: str, generated: str) -> str:
    heading = re.search(rf"^## {re.escape(title)}\s*$", document, flags=re.MULTILINE)
    if heading is None:
        return f"{document.rstrip()}\n\n## {title}\n\n{generated}"
    following = re.search(r"^## ", document[heading.end() :], flags=re.MULTILINE)
    end = heading.end() + following.start() if following else len(document)
    section = document[heading.end() : end]
    if BEGIN in section:
        section = _replace_between(section, BEGIN, END, generated)
    else:
        section = f"{section.rstrip()}\n\n{generated}"
    return document[: heading.end()] + section.rstrip("\n") + "\n\n" + document[end:].lstrip("\n")


def unregistered(benches: Iterable[Bench]) -> list[str]:
    """Benchmark scripts (with a ``__main__`` entry) that ``BENCHES`` does not list."""
    known = {b.script for b in benches} | HELPERS
    found = []
    for path in sorted((REPO / "bench").glob("*/*.py")):
        relative = path.relative_to(REPO).as_posix()
        if relative not in known and '__name__ == "__main__"' in path.read_text():
            found.append(relative)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, short runs")
    parser.add_argument("--output", type=Path, default=DOC, help="the document to rewrite")
    parser.add_argument("--only", nargs="+", metavar="PACKAGE", help="e.g. trainer api")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per benchmark")
    args = parser.parse_args(argv)
    timeout_s = args.timeout or (900.0 if args.quick else 3600.0)
    selected = [b for b in BENCHES if not args.only or b.key in {o.lower() for o in args.only}]
    for script in unregistered(BENCHES):
        print(f"WARNING: {script} is not listed in bench/run_all.py BENCHES: not run", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    scratch = (RESULTS / "scratch").relative_to(REPO)  # the benchmarks run in the repository
    (REPO / scratch).mkdir(exist_ok=True)
    machine_text = machine()
    outcomes = [run(b, quick=args.quick, scratch=scratch, timeout_s=timeout_s) for b in selected]
    sections: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        sections.setdefault(outcome.bench.section, []).append(outcome)
    source = args.output if args.output.exists() else DOC
    document = source.read_text() if source.exists() else "# Benchmarks\n"
    generated = {title: block(items, quick=args.quick) for title, items in sections.items()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(rewrite(document, generated, machine_text))
    failed = [o.command for o in outcomes if o.code not in (0, None)]
    print(f"\nwrote {args.output}; full outputs in {RESULTS}", flush=True)
    for command in failed:
        print(f"FAILED: {command}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
