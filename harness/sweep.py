"""`python -m harness.sweep`: expand a YAML sweep into runs and execute them locally or on SLURM.
The code: harness/launch/sweep.py."""
import sys

from harness.launch.sweep import main

if __name__ == "__main__":
    sys.exit(main())
