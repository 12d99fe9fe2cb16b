"""Why Min-Nets work: hyperselectivity instruments for trained units (paper Section 2.3).

:func:`analyze_run` measures a trained run's filter-pair angles, iso-response geometry,
end-stopping and silent units and writes tables and figures; the modules hold the
instruments, each testable on hand-built units.
"""

from minnets.analysis.run import ANALYSIS_JSON, analyze_run

__all__ = ["ANALYSIS_JSON", "analyze_run"]
