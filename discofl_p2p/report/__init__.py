"""What a finished run reports: results.json, the expectations, and the plots."""

from discofl_p2p.report.plots import plot_accuracy, plot_rewards
from discofl_p2p.report.results import Expectation, adversary_share, check_expectations, results_dict, write_results

__all__ = [
    "Expectation",
    "adversary_share",
    "check_expectations",
    "plot_accuracy",
    "plot_rewards",
    "results_dict",
    "write_results",
]
