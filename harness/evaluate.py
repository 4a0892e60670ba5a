"""`python -m harness.evaluate`: evaluate a finished run's final weights (the code: harness/train/evaluate.py)."""
import sys

from harness.train.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
