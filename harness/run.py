"""`python -m harness.run`: train (or resume) one run directory (the code: harness/train/job.py)."""
import sys

from harness.train.job import main

if __name__ == "__main__":
    sys.exit(main())
