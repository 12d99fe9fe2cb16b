"""Robustness of trained models: perturbation suites and the one evaluator they share.

Suites (see :mod:`minnets.robustness.suite`): ``jpeg`` (the paper's Section 3.2),
``corruptions`` (CIFAR-10-C, Hendrycks & Dietterich 2019) and ``adversarial`` (APGD, PGD,
FGSM, Square and AutoAttack, Croce & Hein 2020). Each writes ``RUN_DIR/<suite>.csv`` with the
test error and the POCP (paper Eq. 5) per level.
"""

from minnets.robustness.evaluate import (
    ImageModel,
    error_and_pocp,
    evaluate_suite,
    predict,
    predict01,
    read_suite_csv,
    run_suite,
    suite_complete,
    write_suite_csv,
)
from minnets.robustness.jpeg import (
    COLUMNS,
    JPEG_CSV,
    QUALITIES,
    JpegSuite,
    evaluate_jpeg,
    format_jpeg_table,
    read_jpeg_csv,
    run_jpeg,
    write_jpeg_csv,
)
from minnets.robustness.suite import SUITES, Clean, Perturbed, Suite, get_suite, suite_class

#: The JPEG name of :func:`error_and_pocp`, kept for existing callers.
jpeg_metrics = error_and_pocp

__all__ = [
    "SUITES", "Clean", "Perturbed", "Suite", "get_suite", "suite_class",
    "ImageModel", "error_and_pocp", "evaluate_suite", "predict", "predict01", "read_suite_csv", "run_suite",
    "suite_complete", "write_suite_csv",
    "COLUMNS", "JPEG_CSV", "QUALITIES", "JpegSuite", "evaluate_jpeg", "format_jpeg_table", "jpeg_metrics",
    "read_jpeg_csv", "run_jpeg", "write_jpeg_csv",
]
