"""`python -m harness.export`: replay finished runs into TensorBoard, W&B or MLflow.
The code: harness/reporting/export.py."""
import sys

from harness.reporting.export import main

if __name__ == "__main__":
    sys.exit(main())
