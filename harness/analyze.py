"""`python -m harness.analyze`: value-estimation analysis of PPO / VinePPO snapshots.
The code: harness/analysis/values.py."""
import sys

from harness.analysis.values import main

if __name__ == "__main__":
    sys.exit(main())
