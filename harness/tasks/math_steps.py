"""Step splitters for MATH solutions; each returns steps with "".join(steps) == text.

`authors` (the default, task.splitter: authors) follows the rules of the authors' `split_solution_inplace`
(McGill-NLP/VinePPO, src/treetune/tasks/math_extract_steps_inplace.py), the states of every MATH run in the paper;
`python -m harness.tasks.check` measures how often both cut a solution identically (tests/test_tasks.py pins it).
  1. mask math blocks ([asy], tabular, \\(..\\), \\[..\\], $$..$$, $..$, \\begin..\\end) with 60-character tokens;
  2. cut at newlines (the newline starts the next part) and after sentence ends (". " + capital letter, not after a
     one- or two-letter word); parts under 20 characters not ending in "." join the next;
  3. cut after blocks ending in a period (`.$`, `.$$`, `.\\)`, `.\\]`); unmasked parts under 20 characters not
     ending that way join the next (the last one the previous);
  4. cut at newlines inside blocks; parts that are a lone opening delimiter or under 3 characters join the next;
  5. halve parts over 100 characters, again and again, at the candidate nearest the middle: in prose `,`, ` and`,
     `:`, ` to` (both sides >= 40 characters; math masked), else anywhere at `,$`, `,\\)`, `,\\]`, `=`, `\\equiv`,
     `+`, `\\cancelto` (both sides >= 20).
Lengths are the authors' (masked lengths in 2, unmasked in 3-5), quirks included: a repeated block's newlines
cut only at its first occurrence in a part, and step 5's "already broken in math" range is kept in the piece's own
offsets, as theirs is. Where their code fails an assertion (a response under 20 characters, nested blocks) this one
returns an answer instead.

`blocks` (task.splitter: blocks) never cuts inside a math block: newlines and sentence ends outside math, short
parts merged forward, long parts halved at prose delimiters only. It gives about 6 steps per MATH500 solution
where the authors' rules give about 10.
"""
from __future__ import annotations

import bisect
import re

# --- the authors' rules ------------------------------------------------------------------------------------------
TOKEN_LEN = 60                                        # as long as theirs: lengths decide merges and middles
_TOKEN = re.compile(r"<\|\d{56}\|>")
_MASKS = [re.compile(p, re.S) for p in (             # in this order, each on the text the earlier ones masked
    r"\[asy\].*?\[/asy\]",
    r"\$\\begin\{tabular\}.*?\\end\{tabular\}\$",
    r"\\begin\{tabular\}.*?\\end\{tabular\}",
    r"\\\(.*?\\\)",
    r"\\\[.*?\\\]",
    r"\$\$.*?\$\$",
    r"(?<!\\)\$.*?[^\\]\$(?!\$)",
    r"\\begin\{([^}]*)\}.*?\\end\{\1\}",
)]
_SENTENCE = re.compile(r"(?<!\b[A-Za-z]\.)(?<!\s[A-Za-z]\.)(?<!\s[A-Za-z][A-Za-z]\.)(?<=\.)(?=\s+[A-Z])")
_PERIOD_TAILS = (".$", ".$$", ".\\)", ".\\]")
_OPENING = re.compile(r"\$|\$\$|\\\(|\\\[|\\begin\{[^}]*\}|\[asy\]")
_PROSE_CUTS = ((re.compile(","), 1), (re.compile(r"\sand\s"), 4), (re.compile(":"), 1), (re.compile(r"\sto\s"), 3))
_MATH_CUTS = ((re.compile(r",\$"), 2), (re.compile(r",\\\)"), 3), (re.compile(r",\\\]"), 3), (re.compile("="), 1),
              (re.compile(r"\\equiv"), 6), (re.compile(r"\+"), 1), (re.compile(r"\\cancelto"), 9))
MAX_PART = 100


class _Masked:
    """`text` with its math blocks replaced by tokens; one token per distinct block (theirs is a content hash)."""

    def __init__(self, text: str):
        self.blocks: dict[str, str] = {}
        token_of: dict[str, str] = {}

        def mask(m):
            if m.group(0) not in token_of:
                token_of[m.group(0)] = tok = f"<|{len(token_of):056d}|>"
                self.blocks[tok] = m.group(0)
            return token_of[m.group(0)]
        for pat in _MASKS:
            text = pat.sub(mask, text)
        self.text = text

    def unmask(self, s: str) -> str:
        for tok, block in reversed(self.blocks.items()):   # later blocks may hold earlier tokens
            s = s.replace(tok, block)
        return s


def _parts(cuts):
    return zip(cuts, cuts[1:])


def _merge_short(cuts: list[int], is_short) -> list[int]:
    """Parts for which is_short(a, b) holds join the next part (the last one the previous)."""
    i = 0
    while i < len(cuts) - 1 and len(cuts) > 2:
        if is_short(cuts[i], cuts[i + 1]):
            del cuts[i if i == len(cuts) - 2 else i + 1]
        else:
            i += 1
    return cuts


def _lines_and_sentences(masked: str) -> list[int]:
    pieces = []
    for sentence in _SENTENCE.split(masked):
        first, *rest = sentence.split("\n")
        pieces += [first] + ["\n" + r for r in rest]
    i = 0
    while i < len(pieces) - 1:                        # (the last piece may stay short)
        if not pieces[i].endswith(".") and len(pieces[i]) < 20:
            pieces[i:i + 2] = [pieces[i] + pieces[i + 1]]
        else:
            i += 1
    cuts = [0]
    for p in pieces:
        cuts.append(cuts[-1] + len(p))
    return cuts


def _after_period_blocks(m: _Masked, cuts: list[int]) -> list[int]:
    new = [0]
    for a, b in _parts(cuts):
        new += [t.end() for t in _TOKEN.finditer(m.text, a, b) if m.blocks[t.group()].endswith(_PERIOD_TAILS)]
        new.append(b)
    return _merge_short(new, lambda a, b: (len(s := m.unmask(m.text[a:b])) < 20
                                           and not s.endswith(_PERIOD_TAILS)))


def _newlines_in_blocks(m: _Masked, cuts: list[int]) -> tuple[list[int], str]:
    """Cuts in unmasked offsets, plus the unmasked text."""
    new = [0]
    for a, b in _parts(cuts):
        part, points, base = m.text[a:b], [], new[-1]
        while t := _TOKEN.search(part):
            block = m.unmask(t.group())
            points += [t.start() + n.start() for n in re.finditer("\n", block)]
            part = part.replace(t.group(), block)
        new += [base + p for p in points] + [base + len(part)]
    text = m.unmask(m.text)
    return _merge_short(new, lambda a, b: len(text[a:b]) < 3 or bool(_OPENING.fullmatch(text[a:b].strip()))), text


def _nearest_middle(positions: list[int], n: int) -> int | None:
    return min(positions, key=lambda p: abs(2 * p - n)) if positions else None


def _halve_in_prose(piece: str) -> int | None:
    m = _Masked(piece)
    for pat, skip in _PROSE_CUTS:
        p = _nearest_middle([x.start() + skip for x in pat.finditer(m.text)], len(m.text))
        if p is not None:
            left = len(m.unmask(m.text[:p]))
            if min(left, len(piece) - left) >= 40:
                return left
    return None


def _halve_in_math(piece: str) -> int | None:
    for pat, skip in _MATH_CUTS:
        p = _nearest_middle([x.start() + skip for x in pat.finditer(piece)], len(piece))
        if p is not None and min(p, len(piece) - p) >= 20:
            return p
    return None


def _break_long(part: str) -> list[int]:
    cuts, lo, hi, i = [0, len(part)], -1, 0, 0
    while i < len(cuts) - 1:
        a, b = cuts[i], cuts[i + 1]
        if b - a > MAX_PART:
            p = _halve_in_prose(part[a:b]) if not lo <= a < hi else None
            if p is None and (p := _halve_in_math(part[a:b])) is not None:
                lo, hi = (p if lo == -1 else min(lo, p)), max(hi, b - a)   # the piece's offsets, as theirs
            if p is not None:
                cuts.insert(i + 1, a + p)
                continue
        i += 1
    return cuts


def split_steps_authors(text: str) -> list[str]:
    m = _Masked(text)
    cuts = _after_period_blocks(m, _lines_and_sentences(m.text))
    cuts, plain = _newlines_in_blocks(m, cuts)
    if plain != text:                                  # only if the text itself holds a token-like string
        return [text]
    out = [0]
    for a, b in _parts(cuts):
        out += [a + c for c in _break_long(text[a:b])[1:]] if b - a > MAX_PART else [b]
    steps = [text[a:b] for a, b in _parts(out) if b > a]
    return steps or [text]


# --- blocks: never inside math ---------------------------------------------------------------------------------
# Math blocks a step boundary must never cut, leftmost first; at one position the first alternative wins.
_BLOCK = re.compile(r"""
    \[asy\][\s\S]*?\[/asy\]                           # Asymptote figures
  | \\begin\{(?P<env>[^}]*)\}[\s\S]*?\\end\{(?P=env)\}  # environments (align, tabular, ...)
  | \$\$[\s\S]*?\$\$                                  # $$ display $$
  | \\\[[\s\S]*?\\\]                                  # \[ display \]
  | \\\([\s\S]*?\\\)                                  # \( inline \)
  | (?<!\\)\$(?:\\[\s\S]|[^\\$])*\$                   # $ inline $ (\$ is a dollar sign, not math)
""", re.X)
_SENTENCE_END = re.compile(r"\.(?=\s+[A-Z])")          # a period, whitespace, a capital letter
_ABBREV = re.compile(r"(?:\b(?:e\.g|i\.e|etc|vs|Mr|Mrs|Dr|St|cf))$")
_PROSE_BREAK = re.compile(r", |: | and | to ")
MIN_LEN, MAX_LEN, MIN_SIDE = 20, 100, 40


def protected_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _BLOCK.finditer(text)]


def _inside(spans: list[tuple[int, int]], starts: list[int], p: int) -> bool:
    i = bisect.bisect_right(starts, p - 1) - 1             # last span starting before p
    return i >= 0 and spans[i][0] < p < spans[i][1]


def split_steps_blocks(text: str) -> list[str]:
    """1. boundaries at every newline (it starts the next step) and after sentence-ending periods (also a period
       closing a math block, `.$`), never inside a math block;
    2. parts shorter than 20 characters (whitespace-only ones always) merge into the next part, unless they end
       a sentence; a short tail merges into the previous one;
    3. parts longer than 100 characters break at the prose delimiter (", ", ": ", " and ", " to ") nearest their
       middle with >= 40 characters on each side, recursively."""
    spans = protected_spans(text)
    starts = [s for s, _ in spans]
    cuts = {m.start() for m in re.finditer(r"\n", text)}
    cuts |= {m.end() for m in _SENTENCE_END.finditer(text) if not _ABBREV.search(text[:m.start()])}
    cuts |= {e for s, e in spans if re.match(r"\s+[A-Z]", text[e:]) and re.search(r"\.(\$\$?|\\[\])])$", text[s:e])}
    cuts = sorted(c for c in cuts if 0 < c < len(text) and not _inside(spans, starts, c))
    bounds = [0] + cuts + [len(text)]
    merged: list[tuple[int, int]] = []
    pending = None
    for s, e in _parts(bounds):
        if pending is not None:
            s = pending
        chunk = text[s:e]
        if not chunk.strip() or (len(chunk.strip()) < MIN_LEN and not re.search(r"\.(\$\$?|\\[\])])?\s*$", chunk)):
            pending = s
            continue
        merged.append((s, e))
        pending = None
    if pending is not None:
        if merged:
            merged[-1] = (merged[-1][0], len(text))
        else:
            merged.append((pending, len(text)))
    out: list[tuple[int, int]] = []
    for s, e in merged:
        out += _break_prose(text, s, e, spans, starts)
    return [text[s:e] for s, e in out] or [text]


def _break_prose(text, s, e, spans, starts) -> list[tuple[int, int]]:
    if e - s <= MAX_LEN:
        return [(s, e)]
    mid = (s + e) / 2
    best = None
    for m in _PROSE_BREAK.finditer(text, s, e):
        p = m.end() if m.group() in (", ", ": ") else m.start()   # ", " ends a piece; " and " starts one
        if p - s >= MIN_SIDE and e - p >= MIN_SIDE and not _inside(spans, starts, p):
            if best is None or abs(p - mid) < abs(best - mid):
                best = p
    if best is None:
        return [(s, e)]
    return _break_prose(text, s, best, spans, starts) + _break_prose(text, best, e, spans, starts)


SPLITTERS = {"authors": split_steps_authors, "blocks": split_steps_blocks}
