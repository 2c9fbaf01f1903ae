"""`make mutate`: mutmut over the modules that hold the kit's promises, two shards at a time.

Each module of tests/mutation/modules.toml is mutated in its own copy of the checkout with
only its own tests (so modules are independent shards: `--only PATH` runs one); `--jobs`
shards run side by side, the longest (by its bound) first, so the whole run ends about when
its longest shard does. Prints, per module, `mutation score <module>: <killed>/<total>
(<percent>%)` and its wall time, then the total wall time. Mutants listed in
tests/mutation/equivalent.txt (each with a reason) are left out of the total; any other
survivor is printed, and the exit code is 1 when one is left.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
KILLED = {"killed", "timeout", "caught by type check"}
RECHECK = 5  # a timed-out mutant is re-run with this many times its first bound


def equivalents() -> dict[str, str]:
    """mutant name -> why it cannot change behaviour (tests/mutation/equivalent.txt)."""
    out = {}
    for line in (HERE / "equivalent.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, reason = line.partition(" ")
            if not reason.strip():
                sys.exit(f"equivalent.txt: {name} has no reason")
            out[name] = reason.strip()
    return out


def mutmut_config(module: dict, multiplier: float) -> str:
    tests = "\n    ".join(module["tests"])
    extra = "\n    ".join(sorted(p.name for p in ROOT.iterdir()
                               if p.name not in ("fieldkit", "tests", "mutants") and not p.name.startswith(".")))
    return ("[mutmut]\n"
            "source_paths = fieldkit\n"
            f"only_mutate = {module['path']}\n"
            f"pytest_add_cli_args_test_selection =\n    {tests}\n"
            # what tests read besides the code (models, docs, provisioning files)
            f"also_copy =\n    {extra}\n"
            # mutation_order.py: the tests in the order listed (fastest first)
            "pytest_add_cli_args =\n    -p\n    no:cacheprovider\n    -p\n    no:xdist\n    -p\n    mutation_order\n    -q\n"
            # CPU seconds a mutant may take, as a multiple of its tests' clean time: mutmut's 15 (x2)
            # spends most of a fast module's run waiting on mutants that loop forever
            f"timeout_multiplier = {multiplier}\n"
            # each mutant forked from a process that has only collected the tests: forked from
            # mutmut's own, which ran them, a mutant inherits thread pools whose threads are
            # gone (the blob store's fsync pool) and hangs, which would count as a kill
            "process_isolation = forkserver\n")


def run_module(module: dict, children: int, keep: bool) -> tuple[int, int, list[str], list[str]]:
    """(killed, counted, survivors, notes) of one module; notes are printed with its score."""
    path = module["path"]
    notes: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="mutate-"))
    try:
        shutil.copytree(ROOT, work, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".git", "mutants", ".venv", "__pycache__", "*.egg-info"))
        multiplier = module.get("timeout_multiplier", 15)
        (work / "setup.cfg").write_text(mutmut_config(module, multiplier))
        # kit processes started by the tests must import the mutated copy, not the installed one;
        # the folder must exist before mutmut starts, or Python caches it as "nothing here"
        (work / "mutants").mkdir()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(work / "mutants"), str(work / "tests" / "mutation")]),
                   PYTHONDONTWRITEBYTECODE="1", MUTATE_TEST_ORDER="\n".join(module["tests"]),
                   **{k: str(v) for k, v in module.get("env", {}).items()})
        names = [f"{_dotted(path)}.{f}__mutmut_*" for f in module.get("functions", [])]
        # listed equivalents are left out of the score, so they are not run either: for a function
        # named in full, globs that match every mutant number but the listed ones
        to_run = [g for f in module.get("functions", []) for g in _without_equivalents(f"{_dotted(path)}.{f}")]
        cmd = ["nice", "-n", "19", sys.executable, "-m", "mutmut", "run", "--max-children", str(children)]
        log = work / "mutmut.log"
        deadline = time.monotonic() + module.get("timeout_minutes", 40) * 60
        with log.open("w") as out:
            finished = _run_until(cmd + to_run, work, env, out, deadline)
            timeouts = [k for k, v in _statuses(work, env, names).items() if v == "timeout"]
            if finished and timeouts:
                # mutmut's timeout is wall time: on a loaded machine a mutant whose tests merely ran
                # slowly is "timed out" and would count as killed. Re-run exactly those (named: a
                # glob would re-run every mutant it matches), with RECHECK times the room.
                (work / "setup.cfg").write_text(mutmut_config(module, multiplier * RECHECK))
                finished = _run_until(cmd + timeouts, work, env, out, deadline)
                still = sum(v == "timeout" for v in _statuses(work, env, names).values())
                notes.append(f"{path}: {len(timeouts)} timed-out mutants re-run with {RECHECK}x the time: "
                             f"{still} still time out")
            if not finished:
                notes.append(f"{path}: stopped after {module.get('timeout_minutes', 40)} minutes; "
                             "mutants not run count as survivors")
        statuses = _statuses(work, env, names)
        if not statuses or all(v == "not checked" for v in statuses.values()):
            # usually a test that fails without any mutant (the clean run): say so, with its output
            tail = log.read_text(errors="replace").replace("\r", "\n")[-3000:]
            raise NoMutantsRun(f"{tail}\nno mutants were run for {path}: see the output above")
        skip = equivalents()
        counted = {k: v for k, v in statuses.items() if k not in skip}
        killed = sum(v in KILLED for v in counted.values())
        survivors = sorted(f"{k}: {v}" for k, v in counted.items() if v not in KILLED)
        if keep:
            notes.append(f"kept {work}")
        return killed, len(counted), survivors, notes
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


class NoMutantsRun(Exception):
    """A shard ran no mutant (usually its tests fail without any mutant)."""


def _run_until(cmd: list[str], work: Path, env: dict, out, deadline: float) -> bool:
    """Runs mutmut until it ends or the module's deadline; False when it was stopped."""
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own group: a timeout stops every worker
    try:
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        return True
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        return False


def _statuses(work: Path, env: dict, names: list[str]) -> dict[str, str]:
    """mutant name -> mutmut's verdict, for the functions that hold the promise (all when none named)."""
    listing = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=work, env=env,
                             capture_output=True, text=True, check=False).stdout
    statuses = dict(re.findall(r"^\s+(\S+): (.+)$", listing, flags=re.M))
    if names:
        statuses = {k: v for k, v in statuses.items() if any(_match(k, n) for n in names)}
    return statuses


def _without_equivalents(function: str) -> list[str]:
    """mutmut name globs for every mutant of `function` except those in equivalent.txt (a glob
    function name is returned whole)."""
    if "*" in function or "?" in function or "[" in function:
        return [f"{function}__mutmut_*"]
    skip = {name.rpartition("_")[2] for name in equivalents() if name.rpartition("_")[0] == f"{function}__mutmut"}
    return [f"{function}__mutmut_{tail}" for width in range(1, 5) for tail in _digits(width, "", skip)]


def _digits(width: int, head: str, skip: set[str]) -> list[str]:
    """Globs for the numbers of `width` more digits after `head`, none of them in `skip`."""
    skip = {n for n in skip if len(n) == len(head) + width and n.startswith(head)}
    if not skip:
        return [head + "?" * width]
    first = "123456789" if not head else "0123456789"
    if width == 1:
        left = "".join(d for d in first if head + d not in skip)
        return [f"{head}[{left}]"] if left else []
    return [g for d in first for g in _digits(width - 1, head + d, skip)]


def _dotted(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def _match(mutant: str, pattern: str) -> bool:
    return fnmatch.fnmatch(mutant, pattern)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="module path(s) to run (default: all)")
    parser.add_argument("--shard", help="K/N: run every N-th module from the K-th (modules split across runs)")
    parser.add_argument("--jobs", type=int, default=2, help="shards run side by side (default 2)")
    parser.add_argument("--children", type=int, default=1, help="parallel mutants per shard (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the work copy (to `mutmut show` a mutant)")
    args = parser.parse_args()
    modules = tomllib.loads((HERE / "modules.toml").read_text())["module"]
    if args.only:
        modules = [m for m in modules if m["path"] in args.only]
        missing = set(args.only) - {m["path"] for m in modules}
        if missing:
            sys.exit(f"not in tests/mutation/modules.toml: {', '.join(sorted(missing))}")
    if args.shard:
        k, _, n = args.shard.partition("/")
        if not (k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
            sys.exit("--shard takes K/N with 1 <= K <= N, e.g. 1/2")
        modules = modules[int(k) - 1::int(n)]
    if args.jobs < 1 or args.children < 1:
        sys.exit("--jobs and --children take 1 or more")
    # longest first: with two at a time the short ones fill in beside the long ones
    modules = sorted(modules, key=lambda m: -m.get("timeout_minutes", 40))
    printing = threading.Lock()
    start_all = time.monotonic()

    def one(module: dict) -> int:
        start = time.monotonic()
        try:
            killed, total, survivors, notes = run_module(module, args.children, args.keep)
        except NoMutantsRun as exc:
            with printing:
                print(exc, flush=True)
            return 1
        wall = time.monotonic() - start
        with printing:
            for note in notes:
                print(note)
            print(f"mutation score {module['path']}: {killed}/{total} ({100 * killed / max(total, 1):.1f}%) in {wall:.0f} s",
                  flush=True)
            for s in survivors:
                print(f"    survived {s}", flush=True)
        return len(survivors)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        left = sum(pool.map(one, modules))
    load = os.getloadavg()
    print(f"mutation testing: {len(modules)} modules in {time.monotonic() - start_all:.0f} s "
          f"({args.jobs} at a time; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f})", flush=True)
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
