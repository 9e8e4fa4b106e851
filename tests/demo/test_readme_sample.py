"""The README's sample output of ``neuronsplit demo`` is what the demo prints.

Every untagged code block of the README's "Quick start" section is a sample of the demo's
output, matched line by line against the real output of the shared ``demo_run``:

* a line ``...`` stands for any number of output lines (rows left out);
* a line ending in ``...`` is the start of an output line (the rest left out);
* any other line must be the next output line.

Within a line, the text between numbers (labels, ``PASS``, ``MET``, column order) must be
the same up to runs of spaces; integers (units, classes, counts, ``n=``, percentages) must be
equal; the demo trains on one thread with fixed seeds, so on the machine that wrote the README
every number is equal as printed. Other CPUs or torch builds may round the last digit
differently, so fixed-point numbers may differ by up to 0.02 (8 of the 397 test images for an
accuracy) and numbers printed as ``x.xxe-yy`` (the max |delta logit| of the float checks,
rounding noise) by up to a factor of 10.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
#: a number not glued to a name (``fc1``, ``blocks.0``): ``-0.38``, ``283``, ``4.05e-06``
NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
FIXED_TOL = 0.02
SCI_FACTOR = 10.0


def sample_blocks(readme: str) -> list[list[str]]:
    """The untagged code blocks of the README's "Quick start" section, as lists of lines."""
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks: list[tuple[str, list[str]]] = []  # (info string, lines)
    inside = False
    for line in section.splitlines():
        if line.startswith("```"):
            inside = not inside
            if inside:
                blocks.append((line[3:].strip(), []))
        elif inside:
            blocks[-1][1].append(line)
    return [lines for info, lines in blocks if not info]


def _tokens(line: str) -> list[str]:
    """Alternating text and numbers (text first), runs of spaces squeezed to one."""
    parts = NUMBER.split(line)
    numbers = NUMBER.findall(line)
    out = [re.sub(r"\s+", " ", parts[0])]
    for number, text in zip(numbers, parts[1:], strict=True):
        out += [number, re.sub(r"\s+", " ", text)]
    return out


def _number_mismatch(want: str, got: str) -> bool:
    if "e" in want or "e" in got:  # rounding noise: the same order of magnitude
        a, b = abs(float(want)), abs(float(got))
        if a == 0 or b == 0:
            return a != b
        return abs(math.log10(a / b)) > math.log10(SCI_FACTOR)
    if "." in want or "." in got:
        return abs(float(want) - float(got)) > FIXED_TOL
    return want != got  # counts, units, classes: exact


def line_mismatch(sample: str, real: str) -> str | None:
    """Why the README line ``sample`` does not describe the output line ``real`` (or None)."""
    prefix = sample.rstrip().endswith("...")
    want = _tokens(sample.rstrip()[:-3] if prefix else sample)
    got = _tokens(real)
    if prefix:
        if len(got) < len(want):
            return f"{real!r} is shorter than {sample!r}"
        got = got[: len(want)]
        got[-1] = got[-1][: len(want[-1])]  # the README cut the line inside this text
    if len(want) != len(got):
        return f"{sample!r} and {real!r} do not have the same fields"
    want[-1], got[-1] = want[-1].rstrip(), got[-1].rstrip()  # trailing spaces are invisible
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        if i % 2 == 0 and w != g:
            return f"text {w!r} != {g!r} in {real!r}"
        if i % 2 == 1 and _number_mismatch(w, g):
            return f"number {w} != {g} in {real!r}"
    return None


def block_mismatch(block: list[str], output: list[str]) -> str | None:
    """Why ``block`` (README lines, ``...`` for left-out lines) is not an excerpt of
    ``output`` in order (or None). The block may start at any output line."""
    pos, gap = 0, True
    for line in block:
        if line.strip() == "...":
            gap = True
            continue
        if gap:
            found = [i for i in range(pos, len(output)) if line_mismatch(line, output[i]) is None]
            if not found:
                return f"README line {line!r} is not in the demo's output (after line {pos})"
            pos = found[0] + 1
        else:
            if pos >= len(output):
                return f"README line {line!r} is past the end of the demo's output"
            why = line_mismatch(line, output[pos])
            if why is not None:
                return f"README line {line!r} does not match output line {pos}: {why}"
            pos += 1
        gap = False
    return None


def test_readme_sample_output_is_the_demo_output(demo_run: tuple[dict, str, Path]) -> None:
    _, printed, _ = demo_run
    blocks = sample_blocks(README.read_text(encoding="utf-8"))
    lines = [line for block in blocks for line in block]
    # the CNN's table and the ViT's, with both equivalence checks, at least
    assert any(line.startswith("unit  class pair") for line in lines), blocks
    assert any(line.startswith("DigitsViT:") for line in lines), blocks
    assert sum(line.endswith("(PASS)") for line in lines) == 2, blocks
    output = printed.splitlines()
    for block in blocks:
        assert block_mismatch(block, output) is None, block_mismatch(block, output)


# ------------------------------------------------------------------ the matcher can fail
OUTPUT = [
    "DigitsViT: test accuracy 0.967; ELUDe discover on 8 MLP layers (training digits, no labels)",
    "all  283/768 units split (37%, mean K 2.11): purity 0.550 -> 0.659 (+0.109; random +0.013)",
    "fc1  160/512 units split (31%, mean K 2.11): purity 0.547 -> 0.659 (+0.112; random +0.001)",
    "blocks.0.mlp.fc1     51/128     2.16       +0.095   +0.038",
    "   2     6-9        0.038  0+6 | 4 | 9               0.75",
    "max |delta logit| = 4.05e-06 (float32), 1.24e-14 (float64) (PASS)",
    "target: purity gain >= +0.10 with >= 33% of units split: MET",
]


@pytest.mark.parametrize(
    "block",
    [
        OUTPUT,
        ["DigitsViT: test accuracy 0.967; ELUDe discover on 8 MLP layers ...", *OUTPUT[1:3]],
        [OUTPUT[0], "...", OUTPUT[-1]],
        ["...", OUTPUT[3].replace("     ", "  "), OUTPUT[4]],  # spacing is free
        [OUTPUT[1].replace("0.550", "0.556"), OUTPUT[2]],  # within the tolerance
        [OUTPUT[5].replace("4.05e-06", "9.1e-07")],  # rounding noise: same magnitude
    ],
)
def test_excerpts_that_match(block: list[str]) -> None:
    assert block_mismatch(block, OUTPUT) is None


@pytest.mark.parametrize(
    ("block", "reason"),
    [
        ([OUTPUT[1].replace("283/768", "284/768")], "not in the demo's output"),  # a count
        ([OUTPUT[1].replace("37%", "38%")], "not in the demo's output"),
        ([OUTPUT[4].replace("6-9", "6-8")], "not in the demo's output"),  # a class pair
        ([OUTPUT[3].replace("blocks.0", "blocks.1")], "not in the demo's output"),  # a label
        ([OUTPUT[-1].replace("MET", "NOT MET")], "not in the demo's output"),
        ([OUTPUT[5].replace("PASS", "FAIL")], "not in the demo's output"),
        ([OUTPUT[1].replace("+0.109", "+0.139")], "not in the demo's output"),  # beyond 0.02
        ([OUTPUT[5].replace("1.24e-14", "1.24e-06")], "not in the demo's output"),
        ([OUTPUT[1], OUTPUT[3]], "does not match output line 2"),  # a row left out, no "..."
        ([OUTPUT[2], OUTPUT[1]], "does not match output line 3"),  # order
        ([OUTPUT[-1], OUTPUT[-1]], "past the end"),
        ([OUTPUT[1] + " extra"], "not in the demo's output"),
    ],
)
def test_excerpts_that_do_not_match(block: list[str], reason: str) -> None:
    why = block_mismatch(block, OUTPUT)
    assert why is not None and reason in why


def test_sample_blocks_are_the_untagged_blocks_of_quick_start() -> None:
    readme = "# x\n\n## Quick start\n\n```bash\nrun\n```\n\n```\na\n...\nb\n```\n\n## API\n\n```\nc\n```\n"
    assert sample_blocks(readme) == [["a", "...", "b"]]
