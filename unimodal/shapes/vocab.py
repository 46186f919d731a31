"""The Shapes world's words: colours (with their RGB values), shape names, numbers, plurals, articles.

Colour names are exactly GenEval's ten (``evaluate_images.py`` COLORS); GenEval's tags and relations
are `unimodal.evaluation.geneval`'s.
"""
from __future__ import annotations

# RGB of each GenEval colour name. Chosen so that every colour is at least ~100 (Euclidean, 0-255)
# from the default mid-gray background (128, 128, 128) and from each other, and so that the segment
# from the background to one colour stays far from every other colour: an anti-aliased edge pixel is
# a mix of background and object colour, i.e. a point on that segment, and the scorer classifies
# pixels by their nearest segment (see `unimodal.shapes.detect`).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (250, 230, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "purple": (130, 40, 190),
    "pink": (255, 130, 200),
    "brown": (110, 60, 20),
    "black": (10, 10, 10),
    "white": (250, 250, 250),
}
GENEVAL_COLORS: tuple[str, ...] = tuple(PALETTE)

# The converse of each of GenEval's relations.
OPPOSITE: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

NUMBER_WORDS: dict[int, str] = {0: "zero", 1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six",
                                7: "seven", 8: "eight", 9: "nine", 10: "ten"}


def plural(noun: str) -> str:
    """English plural of a shape name ("cross" -> "crosses"); GenEval itself just appends "s"."""
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    return noun + "s"


def article(word: str) -> str:
    """GenEval picks "an" before a vowel-initial word ("an orange cow", "an oven")."""
    return "an" if word[:1] in "aeiou" else "a"


def number_word(n: int) -> str:
    if n not in NUMBER_WORDS:
        raise ValueError(f"no number word for {n}; counts must be in 0..10")
    return NUMBER_WORDS[n]
