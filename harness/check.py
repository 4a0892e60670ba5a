"""`python -m harness.check`: check a finished sweep against the README's claims.
The code: harness/reporting/check.py."""
import sys

from harness.reporting.check import main

if __name__ == "__main__":
    sys.exit(main())
