"""Answer extraction and equivalence for GSM8K and MATH.

    is_equiv_many([(pred, gold), ...]) -> [bool, ...]

Order of checks for a (predicted, gold) answer pair:
  1. exact match after Minerva normalisation (lm-eval's `minerva_math.utils.normalize_final_answer`, the
     DeepSeekMath/Minerva rules: strip units, `\\text{}`, `$`, fix `\\frac12`, ...): cheap, in this process
     (a gold answer that is an equation is compared verbatim here: the normalisation keeps only its right side);
  2. math-verify (`verify(parse(gold), parse(pred))`: sympy-level equivalence: 0.5 = \\frac{1}{2}, intervals, sets),
     in a pool of worker processes with a per-item timeout. math-verify is not thread-safe (it times out with
     signals) and sympy can hang on pathological LaTeX, so it never runs in the caller: a worker that overruns is
     killed and the item counts as wrong (counted: `grade_timeouts` in the metrics rows); a pool that cannot start
     or dies raises GraderError (it would otherwise score everything 0);
  3. fallback when math-verify is not installed: step 1 alone (documented: less lenient on equivalent forms).
The pool is started lazily on first use (spawned processes: safe beside torch threads) and shut down at exit.
"""
from __future__ import annotations

import atexit
import concurrent.futures as cf
from concurrent.futures.process import BrokenProcessPool
import math
import multiprocessing as mp
import os
import re
import time

TIMEOUT_S = float(os.environ.get("HARNESS_GRADER_TIMEOUT", 5.0))   # per item, inside the worker and outside
WORKERS = int(os.environ.get("HARNESS_GRADER_WORKERS", 0)) or min(4, os.cpu_count() or 1)
START_S = 300.0         # for the worker pool to start (spawned processes importing the main module and math-verify)
MAX_CHARS = 2000        # a longer "answer" is not an answer: skip the sympy path (it only risks a hang)


# --- extraction -------------------------------------------------------------------------------------------------
def last_boxed(text: str) -> str | None:
    """Contents of the last \\boxed{...} (or \\fbox{...}, or `\\boxed 5`) with balanced braces; None if absent."""
    i = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if i < 0:
        return None
    j = i + (6 if text.startswith("\\boxed", i) else 5)
    if text.startswith(" ", j):                                   # \boxed 5
        m = re.match(r" +([^\s$]+)", text[j:])
        return m.group(1) if m else None
    if not text.startswith("{", j):
        return None
    depth = 0
    for k in range(j, len(text)):
        depth += {"{": 1, "}": -1}.get(text[k], 0)
        if depth == 0:
            return text[j + 1:k]
    return None                                                   # unbalanced: unfinished


def gsm8k_answer(text: str) -> str | None:
    """The text after the last `####` up to the end of its line (the GSM8K format), or None."""
    i = text.rfind("####")
    if i < 0:
        return None
    return text[i + 4:].strip().split("\n")[0].strip() or None


def gsm8k_equal(pred: str | None, gold: str) -> bool:
    """The authors' rule (exact match after removing commas) plus numeric equality, so `18.0`, `$18` and `18.`
    also count: a small, documented leniency over the paper's grader."""
    if pred is None:
        return False
    clean = lambda s: s.replace(",", "").replace("$", "").strip().rstrip(".").strip().lower()  # noqa: E731
    p, g = clean(pred), clean(str(gold))
    if p == g:
        return True
    try:
        a, b = float(p), float(g)
    except ValueError:
        return False
    return math.isfinite(a) and abs(a - b) <= 1e-6           # absolute: 1450001 is not 1450000


# --- equivalence ------------------------------------------------------------------------------------------------
def normalize(ans: str) -> str:
    """Minerva normalisation (lm-eval), with a local copy of its core rules if lm-eval is not installed."""
    try:
        from lm_eval.tasks.minerva_math.utils import normalize_final_answer
        return normalize_final_answer(ans)
    except ImportError:
        s = ans.split("=")[-1]
        s = re.sub(r"\\text\{(.*?)\}", r"\1", s)
        s = re.sub(r"\\(left|right|!|,|;|\s)", "", s).replace("$", "").replace(" ", "")
        s = re.sub(r"\\[dt]?frac(\d)(\d)", r"\\frac{\1}{\2}", s)
        return s.rstrip(".").replace(",", "") if re.fullmatch(r"[\d,.]+", s) else s


def _verify(pred: str, gold: str, timeout: float) -> bool:
    """Runs in a worker process (its main thread: math-verify's signal timeouts work there)."""
    from math_verify import parse, verify
    t = max(1, int(timeout))
    g = parse(f"\\boxed{{{gold}}}", parsing_timeout=t)
    p = parse(f"\\boxed{{{pred}}}", parsing_timeout=t)
    return bool(g and p and verify(g, p, timeout_seconds=t))


def _hang(pred: str, gold: str, timeout: float) -> bool:
    """Stands in for _verify in the tests: a worker stuck where no signal reaches it."""
    time.sleep(3600)
    return True


def _have_math_verify() -> bool:
    try:
        import math_verify  # noqa: F401
        return True
    except ImportError:
        return False


_POOL: cf.ProcessPoolExecutor | None = None
COUNTS = {"graded": 0, "timeouts": 0}


class GraderError(RuntimeError):
    """The grader cannot grade (its worker pool failed): never a silent 0."""


def _pool_failed(why) -> GraderError:
    return GraderError(f"the math-verify worker pool failed ({why}); every answer would score 0. Workers are spawned "
                       f"processes: run from a script or module, not from a script fed on standard input")


def _pool() -> cf.ProcessPoolExecutor:
    """The worker pool, started and warm: spawned workers first re-import the main module (the whole training stack
    under `harness.run`), which on a busy machine takes longer than an item's deadline; that start-up must not be
    counted as grading timeouts."""
    global _POOL
    if _POOL is None:
        _POOL = cf.ProcessPoolExecutor(WORKERS, mp_context=mp.get_context("spawn"))
        try:
            for f in [_POOL.submit(_have_math_verify) for _ in range(WORKERS)]:
                f.result(timeout=START_S)
        except (cf.TimeoutError, BrokenProcessPool) as e:
            _kill_pool()
            raise _pool_failed(e if str(e) else f"not started within {START_S:g}s") from None
    return _POOL


def _kill_pool() -> None:
    """Hung workers cannot be cancelled: kill the processes and start a fresh pool next time."""
    global _POOL
    if _POOL is not None:
        for p in list((_POOL._processes or {}).values()):
            p.kill()
        _POOL.shutdown(wait=False, cancel_futures=True)
        _POOL = None


atexit.register(lambda: _POOL and _POOL.shutdown(wait=False, cancel_futures=True))


def is_equiv_many(pairs: list[tuple[str | None, str]], timeout: float = TIMEOUT_S) -> list[bool]:
    """Equivalence of each (predicted, gold) answer. None or an overlong prediction is wrong. Items that the pool
    has not answered by their deadline (queue position / workers x timeout, plus slack) count as wrong."""
    out = [False] * len(pairs)
    todo = []
    for i, (pred, gold) in enumerate(pairs):
        if pred is None or len(pred) > MAX_CHARS:
            continue
        gold = str(gold)
        if "=" in gold:         # an equation: Minerva's normalisation keeps only the right-hand side ("... = 0")
            same = re.sub(r"\s+", "", pred) == re.sub(r"\s+", "", gold)
        else:
            same = normalize(pred) == normalize(gold) or pred.strip() == gold.strip()
        if same:
            out[i] = True
        else:
            todo.append(i)
    if not todo or not _have_math_verify():
        return out
    pool = _pool()
    futs = [(i, pool.submit(_verify, pairs[i][0], str(pairs[i][1]), timeout)) for i in todo]
    t0, hung = time.monotonic(), False
    COUNTS["graded"] += len(todo)
    for n, (i, f) in enumerate(futs):
        deadline = t0 + (n // WORKERS + 1) * (timeout + 1.0) + 2.0
        try:
            out[i] = f.result(timeout=max(0.0, deadline - time.monotonic()))
        except cf.TimeoutError:                         # the only failure that may count as wrong: one item's time
            hung = True
            COUNTS["timeouts"] += 1
        except BrokenProcessPool as e:                 # the pool could not start or died: nothing can be graded
            _kill_pool()
            raise _pool_failed(e) from None
        except Exception:                               # math-verify raised on this item: it is not equivalent
            pass
    if hung:
        _kill_pool()
    return out


def pop_counts() -> dict[str, int]:
    """Items sent to math-verify and items that timed out since the last call (for the metrics rows)."""
    out = dict(COUNTS)
    COUNTS.update(graded=0, timeouts=0)
    return out


def is_equiv(pred: str | None, gold: str, timeout: float = TIMEOUT_S) -> bool:
    return is_equiv_many([(pred, gold)], timeout)[0]
