"""Files a run writes, written so that nothing is ever half-written or lost: atomic replace for JSON/YAML/status,
append-only JSONL with an fsync per row, truncation to a checkpoint's row count on resume. Plus compute and memory
estimates."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pickle
import resource
import socket
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


class UnsafeFile(Exception):
    """A checkpoint or snapshot that holds more than tensors and plain containers."""


def safe_load(path: str | Path, map_location="cpu", mmap: bool = False, allow: tuple = ()):
    """torch.load that unpickles only tensors and plain containers (`weights_only=True`), plus the plain data
    classes in `allow`: results folders are shared on clusters, and a planted checkpoint must not run code when a run
    resumes or is analyzed. Anything else is refused with an error naming the file."""
    import torch
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise UnsafeFile(f"refusing to load {path}: it holds objects other than tensors and plain containers (not "
                         f"written by this harness, or altered): {str(e).strip().splitlines()[0]}") from None


class RunBusy(Exception):
    """The run is being trained by another process (another sweep, executor or job)."""


@contextlib.contextmanager
def run_lock(run_dir: str | Path):
    """One owner per run: an exclusive flock on <run>/.lock while the run trains. The OS releases it when the holder
    dies (kill -9, node loss), so a lock is never stale; the file names the holder for the error message."""
    path = Path(run_dir) / ".lock"
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise RunBusy(f"{run_dir}: already being trained by {holder}; left alone") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    try:
        yield
    finally:
        f.close()                                           # releases the lock


def lock_holder(run_dir: str | Path) -> str | None:
    """Who trains the run now (None: nobody)."""
    try:
        f = open(Path(run_dir) / ".lock")
    except FileNotFoundError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None                                     # (closing the file drops this shared lock)
        except BlockingIOError:
            return f.read().strip() or "another process"


def read_json(path: str | Path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def run_done(run_dir: str | Path) -> bool | None:
    """True: finished, with its final/ weights; None: says "done" but final/ is gone (the run regenerates it from
    its last checkpoint when started again); False: not finished."""
    if (read_json(Path(run_dir) / "status.json", {}) or {}).get("state") != "done":
        return False
    return True if (Path(run_dir) / "final" / "config.json").exists() else None


def write_status(run_dir: Path, state: str, **fields) -> None:
    old = read_json(run_dir / "status.json", {})
    old.update(fields, state=state, updated=time.time())
    atomic_write(run_dir / "status.json", json.dumps(old, indent=1))


class MetricsMismatch(Exception):
    """metrics.jsonl no longer holds the rows a checkpoint counted (edited, damaged or truncated by hand)."""


class MetricsLog:
    """metrics.jsonl: one JSON object per line, append-only. A checkpoint records how many lines it covers and their
    checksum; resuming keeps exactly those lines, and refuses when they are not what the checkpoint counted."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def _lines(self) -> list[bytes]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        return [ln for ln in data.splitlines(keepends=True) if ln.endswith(b"\n")]     # a torn last line is no row

    def rows(self) -> int:
        return len(self._lines())

    def checksum(self, n_rows: int) -> str:
        return hashlib.sha256(b"".join(self._lines()[:n_rows])).hexdigest()

    def truncate(self, n_rows: int, checksum: str | None = None) -> None:
        """Keep the first n_rows lines (drop rows written after the checkpoint being resumed), after checking that
        they are the rows the checkpoint counted."""
        lines = self._lines()
        bad = [i + 1 for i, ln in enumerate(lines[:n_rows]) if not _parses(ln)]
        if len(lines) < n_rows or bad or (checksum and hashlib.sha256(b"".join(lines[:n_rows])).hexdigest() != checksum):
            why = (f"it has {len(lines)} complete lines" if len(lines) < n_rows else
                   f"line {bad[0]} is not JSON" if bad else "they differ from what was written (checksum)")
            raise MetricsMismatch(f"{self.path}: the checkpoint counts its first {n_rows} rows, but {why}; restore "
                                  f"the file, or delete the run folder to train the run again")
        atomic_write(self.path, b"".join(lines[:n_rows]).decode())

    def append(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _parses(line: bytes) -> bool:
    try:
        json.loads(line)
        return True
    except ValueError:
        return False


def read_jsonl(path: str | Path, bad: list[int] | None = None) -> list[dict]:
    """Complete rows only: a torn last line (a crash mid-write) is ignored. Line numbers of complete lines that are
    not JSON are appended to `bad` when given (readers that report damage)."""
    out = []
    try:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if line.endswith("\n"):
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:
                        if bad is not None:
                            bad.append(n)
    except FileNotFoundError:
        pass
    return out


def estimate_flops(n_params: int, inference_tokens: int, train_tokens: int) -> float:
    """Dense-transformer estimate (Kaplan et al.): 2 N per token for a forward pass (generation, prefill,
    log-probs, critic values), 6 N per token for forward + backward. Attention FLOPs are ignored."""
    return 2.0 * n_params * inference_tokens + 6.0 * n_params * train_tokens


def peak_memory_gb() -> dict[str, float]:
    """This process's peak resident memory and, on a GPU, its peak allocated GPU memory (GiB), for the training
    rows (the rehearsal reports them)."""
    out = {"rss_peak_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}   # Linux: KiB
    import torch
    if torch.cuda.is_available():
        out["gpu_peak_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return out
