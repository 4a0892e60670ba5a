"""`python -m harness.plot`: plots and table.md from a sweep's files (the code: harness/reporting/plot.py)."""
import sys

from harness.reporting.plot import main

if __name__ == "__main__":
    sys.exit(main())
