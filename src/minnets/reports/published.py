"""The paper's published numbers for reports: a view of :mod:`minnets.metadata` (``paper.json``).

Reports put these beside a project's own results; the numbers live in the one table of the
paper's facts, whose "source" field says which table each number comes from.
"""

from minnets.metadata import (
    load_published, paper_dataset, paper_grid, paper_jpeg_mode, paper_models, published_model, qualities,
)

__all__ = ["load_published", "paper_dataset", "paper_grid", "paper_jpeg_mode", "paper_models", "published_model",
           "qualities"]
