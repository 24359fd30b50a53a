"""Kill one of two training ranks with SIGKILL, N times, and resume each time.

    python scripts/kill_resume.py [--repeat 10] [--json OUT.json]

Each round starts the two-rank gloo training of tests/test_distributed.py (torchrun,
one thread per rank, a checkpoint every 5 steps), kills rank 1 (in every other round
rank 0, the one that writes) once the first
checkpoint is on disk, and checks that the job ends with a non-zero status and one
line from thermodiff within the test's timeout, that the checkpoint left loads, and
that rerunning the same command resumes from it and finishes. Prints one line per
round and a summary; exits 1 when any round fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_distributed import KILL_STEPS, KILL_TIMEOUT, kill_one_rank_and_resume  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--json", help="write the rounds' results here")
    args = p.parse_args()
    rounds = []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            try:
                r = kill_one_rank_and_resume(out, rank=i % 2)  # the writer (rank 0) in every other round
            except AssertionError as exc:
                r = {"error": str(exc)}
        ok = ("error" not in r and r["status"] != 0 and r["seconds_to_end"] < KILL_TIMEOUT and len(r["lines"]) == 1
              and r["rerun_status"] == 0 and r["final_step"] == KILL_STEPS)
        r["ok"] = ok
        r.pop("rerun_stdout", None)
        if ok:
            r.pop("rerun_stderr", None)
        rounds.append(r)
        print(f"round {i + 1}: {'ok' if ok else 'FAILED'}  killed rank {i % 2}  status {r.get('status')}  ended "
              f"{r.get('seconds_to_end', float('nan')):.2f} s after the kill  checkpoint step "
              f"{r.get('checkpoint_step')}  rerun status {r.get('rerun_status')}  final step {r.get('final_step')}")
        if "lines" in r:
            print(f"    {r['lines'][0] if r['lines'] else '(no line from thermodiff)'}")
    passed = sum(r["ok"] for r in rounds)
    worst = max((r["seconds_to_end"] for r in rounds if "seconds_to_end" in r), default=float("nan"))
    print(f"{passed} of {len(rounds)} rounds passed; the longest wait from the kill to the job's end: {worst:.2f} s "
          f"(limit {KILL_TIMEOUT:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(rounds, indent=1) + "\n")
    return 0 if passed == len(rounds) else 1


if __name__ == "__main__":
    sys.exit(main())
