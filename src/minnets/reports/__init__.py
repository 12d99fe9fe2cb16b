"""Reports: the paper's tables and figures from run directories, beside the published numbers.

``build_report(runs_root, out_dir)`` writes report.md with PNG figures and CSV tables;
``load_published()`` gives the paper's numbers (Tables 1-5, SPEC sections 4 and 9).
"""

from minnets.reports.build import build_report
from minnets.reports.published import load_published

__all__ = ["build_report", "load_published"]
