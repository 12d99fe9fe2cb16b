"""Reports: the paper's tables and figures from run directories, beside the published numbers.

``build_report(runs_root, out_dir)`` writes report.md with PNG figures and CSV tables;
``load_published()`` gives the paper's numbers (its Figure 2 and Tables 1-5, and the parameter
counts of its models).
"""

from minnets.reports.build import build_report
from minnets.reports.published import load_published

__all__ = ["build_report", "load_published"]
