"""The crash campaign at full size: fleetd SIGKILLed at 100+ aimed points of its tick, restarted each time.

    python bench/crash_campaign.py                    # 119 aimed kills + 8 random + 6 SIGTERMs (~10 min)
    python bench/crash_campaign.py --aimed 34 --random 4 --sigterms 3 --no-faults
    python bench/crash_campaign.py --out bench/out/crash    # keep the run's files there

Prints the counts (kills, restarts, instances, decisions, faults injected, requests)
and every check with what broke it; exits 1 when a check fails. The campaign itself is
tests/crash_support.py (tests/test_crash_campaign.py runs a short one in CI). Each
aimed kill is `FLEET_CRASH_AT=<point>:<n>` (daemon/crashpoint.py); the provider's
faults are injected at its edge (providers/faults.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    from daemon.crashpoint import POINTS
    from tests.crash_support import BUDGET, Campaign

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--aimed", type=int, default=7 * len(POINTS), help="aimed SIGKILLs (default: 7 per point)")
    ap.add_argument("--random", type=int, default=8, help="SIGKILLs at a random moment")
    ap.add_argument("--sigterms", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-faults", action="store_true", help="no provider faults")
    ap.add_argument("--out", type=Path, help="directory for the run's files (default: a temporary one)")
    args = ap.parse_args()
    tmp = args.out or Path(tempfile.mkdtemp(prefix="fleet-crash-"))
    tmp.mkdir(parents=True, exist_ok=True)

    def progress(k, r):
        what = f"{r.point}:{r.n}" if r.how == "aimed" else r.how
        print(f"  run {k + 1:3d} {what:34s} rc={r.rc:4d} {'landed' if r.landed else '':6s} {r.seconds:5.1f} s",
              flush=True)

    print(f"crash campaign in {tmp}: {args.aimed} aimed kills over {len(POINTS)} points, {args.random} random, "
          f"{args.sigterms} SIGTERMs, faults {'off' if args.no_faults else 'on'}")
    t0 = time.time()
    c = Campaign(tmp, aimed=args.aimed, random_kills=args.random, sigterms=args.sigterms, seed=args.seed,
                 faults=not args.no_faults).run(progress)
    checks = c.check()
    counts = c.counts()
    print(json.dumps(counts, indent=1, sort_keys=True))
    print(f"budget {BUDGET} $/h: peak from the store's instance intervals {c.store_peak_usd_per_hour:.4f} $/h; "
          f"from the cloud's journal {c.cloud_peak_usd_per_hour:.4f} $/h (at {c.cloud_peak_at})")
    failed = 0
    for name, problems in checks.items():
        print(f"check {name:18s} {'ok' if not problems else f'FAILED ({len(problems)})'}")
        for p in problems[:10]:
            print(f"    {p}")
        failed += bool(problems)
    print(f"wall time {time.time() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
