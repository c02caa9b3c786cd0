"""Fail when any measured module's branch coverage is under the bar; list what is not covered.

    python scripts/coverage_gate.py [--min 85]

Reads the combined coverage data (``coverage combine`` first).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min", type=float, default=85.0)
    bar = parser.parse_args().min
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, "-m", "coverage", "json", "-q", "-o", out.name], check=True)
        with open(out.name) as report:
            files = json.load(report)["files"]
    low = {name: data["summary"]["percent_covered"] for name, data in files.items()}
    low = {name: pct for name, pct in low.items() if pct < bar}
    if low:
        print(f"\nCoverage gate: these modules are under {bar:g}% (branch coverage):")
        for name, pct in sorted(low.items()):
            print(f"  {name}: {pct:.1f}%")
        return 1
    print(f"\nCoverage gate: every module is at or above {bar:g}% (branch coverage).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
