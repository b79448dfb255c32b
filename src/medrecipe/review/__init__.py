"""Expert review of items in a run: a local web page, crash-safe labels, agreement summary.

    medrecipe review runs/eval/student          # serves http://127.0.0.1:8765/
    medrecipe review runs/eval/student --summary
"""

from medrecipe.review.labels import DIMENSIONS, LabelStore
from medrecipe.review.source import ReviewItem, load_review_items
from medrecipe.review.summary import summarize_labels

__all__ = ["DIMENSIONS", "LabelStore", "ReviewItem", "load_review_items", "summarize_labels"]
