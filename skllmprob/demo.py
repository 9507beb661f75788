"""The main job in one command: classify a small set of movie reviews.

``python -m skllmprob.demo`` classifies 40 short reviews written for this project
(20 positive, 20 negative) with the embedded local model, prints each text's
probabilities and a line with accuracy and log loss. ``--backend deterministic``
runs the same on the offline stand-in backend, without the ``local`` extra.

The embedded model is Gemma 3 270M, a small *base* model: zero-shot it leans on
surface cues. Four short few-shot examples (:data:`EXAMPLES`, also written for this
demo and not among the 40 reviews) show it the answer format; the prompt's prefix
(instructions and examples) is evaluated once and reused for every review.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from sklearn.metrics import accuracy_score, log_loss

from .classifier import LogprobClassifier

#: (text, label) pairs written for this demo; none comes from a data set.
REVIEWS: list[tuple[str, str]] = [
    ("A warm, funny film with a cast that clearly loved making it.", "positive"),
    ("The best thriller I have seen in years; I was gripped to the end.", "positive"),
    ("Gorgeous to look at and moving without being sentimental.", "positive"),
    ("A clever script and a lead performance that deserves every award.", "positive"),
    ("I laughed all the way through and would happily watch it again.", "positive"),
    ("An uplifting story, beautifully told.", "positive"),
    ("The music alone is worth the ticket, and the rest is just as good.", "positive"),
    ("Smart, tender and surprisingly wise about growing old.", "positive"),
    ("A delightful surprise: charming, quick and full of heart.", "positive"),
    ("Every scene is crafted with care; a small masterpiece.", "positive"),
    ("The action is thrilling and the jokes actually land.", "positive"),
    ("A brilliant debut from a director to watch.", "positive"),
    ("Touching, honest and wonderfully acted.", "positive"),
    ("My kids loved it and, to my surprise, so did I.", "positive"),
    ("A joy from the first frame to the last.", "positive"),
    ("Fresh, inventive and a great deal of fun.", "positive"),
    ("It made me cry in the best possible way.", "positive"),
    ("A rich, rewarding film that stays with you.", "positive"),
    ("Excellent pacing and a truly satisfying ending.", "positive"),
    ("One of the most enjoyable films of the year.", "positive"),
    ("A dull, plodding mess that wastes a fine cast.", "negative"),
    ("I checked my watch every ten minutes; painfully boring.", "negative"),
    ("The plot makes no sense and the dialogue is laughable.", "negative"),
    ("A lazy sequel with nothing new to say.", "negative"),
    ("Loud, ugly and exhausting to sit through.", "negative"),
    ("The worst film I have seen this year.", "negative"),
    ("Flat characters, a predictable story and a terrible ending.", "negative"),
    ("I wanted to like it, but it is simply bad.", "negative"),
    ("Two hours of my life I will never get back.", "negative"),
    ("A tedious, self-important bore.", "negative"),
    ("The jokes fall flat and the acting is wooden.", "negative"),
    ("A cynical cash grab with no heart at all.", "negative"),
    ("Badly edited, badly written and badly acted.", "negative"),
    ("Even the special effects look cheap.", "negative"),
    ("A disappointing waste of a great idea.", "negative"),
    ("It drags on forever and goes nowhere.", "negative"),
    ("Confusing, joyless and far too long.", "negative"),
    ("I walked out halfway through; awful.", "negative"),
    ("A stupid script that insults its audience.", "negative"),
    ("Forgettable at best, irritating at worst.", "negative"),
]


#: Few-shot examples shown to the model before each review (not among REVIEWS).
EXAMPLES: list[tuple[str, str]] = [
    ("A wonderful, moving film.", "positive"),
    ("Dull and far too long.", "negative"),
    ("I loved every minute of it.", "positive"),
    ("A boring mess.", "negative"),
]


def main(argv: list[str] | None = None, out=None) -> int:
    """Run the demo; write the table and the summary line to ``out`` (stdout)."""
    out = sys.stdout if out is None else out
    parser = argparse.ArgumentParser(
        prog="python -m skllmprob.demo",
        description="Classify 40 short movie reviews with the embedded model.",
    )
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "deterministic"],
        help="'auto': the embedded local model; 'deterministic': the offline stand-in.",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the summary line")
    args = parser.parse_args(argv)

    texts = [t for t, _ in REVIEWS]
    y = np.array([lab for _, lab in REVIEWS])
    clf = LogprobClassifier(
        labels=["positive", "negative"], examples=EXAMPLES, backend=args.backend
    )
    start = time.perf_counter()
    clf.fit(None, None)
    proba = clf.predict_proba(texts)
    elapsed = time.perf_counter() - start
    pred = clf.classes_[proba.argmax(axis=1)]
    if not args.quiet:
        header = "  ".join(f"P({c})" for c in clf.classes_)
        out.write(f"{header}  label     text\n")
        for p, label, text in zip(proba, y, texts, strict=True):
            cells = "  ".join(f"{v:{len(c) + 3}.3f}" for v, c in zip(p, clf.classes_, strict=True))
            out.write(f"{cells}  {label:<8}  {text}\n")
    acc = accuracy_score(y, pred)
    loss = log_loss(y, proba, labels=clf.classes_)
    out.write(
        f"accuracy {acc:.3f}  log-loss {loss:.3f}  on {len(texts)} reviews "
        f"({elapsed:.1f} s, {clf.usage_.total.requests} requests, "
        f"{clf.usage_.total.cache_hits} cache hits)\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
