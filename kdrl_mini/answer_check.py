r"""Math answer checking with math-verify: does a completion's final answer equal the gold answer?

``math_reward(text, answer)`` is 1.0 when the final answer of ``text`` is mathematically equal
to the gold ``answer`` by Hugging Face's math-verify, else 0.0; it never raises on what a policy
may emit (None, bytes, a megabyte of text: 0.0, measured under 0.2 s each). The final answer
is the later of the last ``\boxed{...}`` (so the last boxed answer counts when there are several)
and the content of the last line starting with ``####``; with neither, math-verify reads the
last 10,000 characters by its own rules ("final answer is ...", else the last number). The gold
answer is read the same way, so a GSM8K gold field (a worked solution ending in "#### 18"), a
MATH solution holding ``\boxed{}``, a bare answer ("18", "2\sqrt{3}") or a number all work. A bare
answer (a ``####`` line, a gold without markers) that is a plain number is read as text, anything
else with digits or a backslash as LaTeX. Accepted, as measured on math-verify 0.9: commas in
numbers ("1,234" = 1234), dollar signs ("$18", "\$18", "\boxed{\$18}"), words after a number
("18 dollars", "5 cm", "\boxed{18 \text{ dollars}}"), LaTeX fractions against decimals
(``\frac{1}{2}`` = 0.5 = 1/2), ``\dfrac``, roots, ``\pi``, intervals, polynomials in any order.
Not accepted, or lenient: scientific notation ("4.2e1" reads 4.2), letters after digits ("#### 42abc"
reads 42, where the strict checker gives 0), percentages ("18%" matches 18), text answers
("Paris") and multiple-choice letters (always 0.0), decimals against constants (3.14159 is not
``\pi``), and answers too large to evaluate (towers like 9^{9^9}, exponents or factorial and
binomial arguments above 10^5), which score 0.0 without being compared. math-verify bounds its
own work with SIGALRM, which works only on the main thread of a POSIX process: there each parse
and each comparison gets ``TIMEOUT_S`` seconds. On other threads, on Windows, or while another
alarm is pending (never cancelled here) it runs without a timeout, and the 10,000-character cap
and the size guard bound the work instead.
"""

from __future__ import annotations

import os
import re
import signal
import threading

MAX_CHARS = 10_000      # characters of a text read after its final-answer marker (or of its tail)
TIMEOUT_S = 2           # math-verify's alarm per parse and per comparison (whole seconds)
MAX_OPERAND = 10**5     # largest number allowed in an exponent or a factorial/binomial argument
MAX_NODES = 2_000       # largest expression tree compared
BOXED = "\\boxed"
_MARKER_LINE = re.compile(r"^[^\S\r\n]*####(.*)$", re.MULTILINE)
_PLAIN_NUMBER = re.compile(r"\$?\s*[-+]?\$?\d[\d,]*(\.\d+)?[\sA-Za-z%$.]*")  # "$1,234.50 dollars."


def _math_verify():
    """The math_verify module, imported on first use (an optional dependency)."""
    try:
        import math_verify
    except ImportError:
        raise ImportError("answer_checker='math' needs math-verify: pip install math-verify "
                          "(or the kit's extra: pip install -e '.[math]')") from None
    return math_verify


def completion_text(value) -> str | None:
    """str as is, bytes decoded (bad bytes dropped), anything else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="ignore")
    return None


def _gold_text(answer) -> str | None:
    """Gold answers may also be plain numbers (not bools)."""
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        return str(answer)
    return completion_text(answer)


def final_answer_span(text: str) -> tuple[str, str]:
    r"""The part of ``text`` that holds its final answer, and where it came from.

    The later of the last ``\boxed`` (from there on: "boxed") and the content of the last
    ``####`` line ("line": a bare answer, no delimiters around it); with neither, the text's
    tail ("free"). Every span is at most ``MAX_CHARS`` long.
    """
    boxed_at = text.rfind(BOXED)
    marker = None
    for marker in _MARKER_LINE.finditer(text):
        pass
    if marker is not None and marker.start() > boxed_at:
        return marker.group(1).strip()[:MAX_CHARS], "line"
    if boxed_at >= 0:
        return text[boxed_at:boxed_at + MAX_CHARS], "boxed"
    return text[-MAX_CHARS:], "free"


def _reads_as_latex(bare: str) -> bool:
    """A bare answer is LaTeX when it has a backslash, or digits that are not a plain number
    ("1+x^2", "(1, 2)"); a plain number with "$", commas and words after it is plain text."""
    if "\\" in bare:
        return True
    return any(c.isdigit() for c in bare) and not _PLAIN_NUMBER.fullmatch(bare)


def _candidate(span: str, bare: bool) -> str:
    r"""What math-verify parses: "\$" dropped (it does not read it outside math mode); a bare
    answer that reads as LaTeX is boxed, as math-verify reads bare text as plain text."""
    span = span.replace("\\$", "")
    if bare and _reads_as_latex(span):
        return BOXED + "{" + span + "}"
    return span


def _signal_timeout() -> int | None:
    """``TIMEOUT_S`` where math-verify's SIGALRM timeout can work without harm, else None."""
    if os.name != "posix" or threading.current_thread() is not threading.main_thread():
        return None
    if signal.getitimer(signal.ITIMER_REAL)[0] > 0:  # someone else's alarm is pending: keep it
        return None
    return TIMEOUT_S


def _small_operand(expr) -> bool:
    """An exponent or factorial argument is small: symbolic, or at most ``MAX_OPERAND`` in size
    (measured in floating point, which costs nothing even for 9^{9^9})."""
    if expr.free_symbols:
        return True
    try:
        return bool(abs(expr.evalf(15)) <= MAX_OPERAND)
    except Exception:  # not a number (nan, zoo, a set ...): do not compare it
        return False


def is_tame(value) -> bool:
    """False for a parsed answer too large to compare quickly (see the module docstring)."""
    import sympy

    if isinstance(value, str):
        return True
    if not isinstance(value, sympy.Basic):
        return isinstance(value, sympy.MatrixBase) and len(value) <= MAX_NODES
    for i, node in enumerate(sympy.preorder_traversal(value)):
        if i >= MAX_NODES:
            return False
        if isinstance(node, sympy.Pow):
            operands = [node.exp]
        elif isinstance(node, (sympy.factorial, sympy.factorial2, sympy.subfactorial, sympy.binomial, sympy.gamma)):
            operands = list(node.args)
        else:
            continue
        if not all(_small_operand(x) for x in operands):
            return False
    return True


def parse_answer(text, gold: bool = False, timeout: int | None = None) -> list:
    """math-verify's parse of the final answer of ``text``; [] when there is none, it cannot be
    parsed, or it is too large to compare. A ``gold`` text without markers is a bare answer
    ("18", "2\\sqrt{3}"); a completion without markers is free text."""
    text = _gold_text(text) if gold else completion_text(text)
    if text is None or not text.strip():
        return []
    span, kind = final_answer_span(text)
    bare = kind == "line" or (gold and kind == "free")
    try:
        parsed = _math_verify().parse(_candidate(span, bare), parsing_timeout=timeout)
    except Exception:  # math-verify catches its own errors; this is the last line of defence
        return []
    return parsed if parsed and all(is_tame(p) for p in parsed) else []


def math_reward(text, answer) -> float:
    """1.0 if the final answer of completion ``text`` equals the gold ``answer`` by math-verify,
    else 0.0. ``answer`` may be a number, a bare answer or a full worked solution."""
    mv = _math_verify()  # a missing dependency is an error, never a silent 0
    timeout = _signal_timeout()
    gold = parse_answer(answer, gold=True, timeout=timeout)
    pred = parse_answer(text, timeout=timeout) if gold else []
    if not gold or not pred:
        return 0.0
    from math_verify.errors import TimeoutException

    try:
        return float(mv.verify(gold, pred, timeout_seconds=timeout))
    except (Exception, TimeoutException):
        return 0.0
