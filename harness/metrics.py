"""Files a run writes, written so that nothing is ever half-written or lost: atomic replace for JSON/YAML/status,
append-only JSONL with an fsync per row, truncation to a checkpoint's row count on resume. Plus compute estimates."""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path


def atomic_write(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | Path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def write_status(run_dir: Path, state: str, **fields) -> None:
    old = read_json(run_dir / "status.json", {})
    old.update(fields, state=state, updated=time.time())
    atomic_write(run_dir / "status.json", json.dumps(old, indent=1))


class MetricsLog:
    """metrics.jsonl: one JSON object per line, append-only."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def rows(self) -> int:
        return len(read_jsonl(self.path))

    def truncate(self, n_rows: int) -> None:
        """Keep the first n_rows complete rows (drop rows written after the checkpoint being resumed)."""
        rows = read_jsonl(self.path)[:n_rows]
        atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in rows))

    def append(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict]:
    """Complete rows only: a torn last line (a crash mid-write) is ignored."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                if line.endswith("\n"):
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass
    except FileNotFoundError:
        pass
    return out


def estimate_flops(n_params: int, inference_tokens: int, train_tokens: int) -> float:
    """Dense-transformer estimate (Kaplan et al.): 2 N per token for a forward pass (generation, prefill,
    log-probs, critic values), 6 N per token for forward + backward. Attention FLOPs are ignored."""
    return 2.0 * n_params * inference_tokens + 6.0 * n_params * train_tokens
