"""xrayviewer: an offline chest X-ray viewer with bundled deep-learning analysis.

Research software, not a medical device. The package is split into rooms with
one-way doors (see README, "Architecture"): imaging -> modellayer (model input, cards,
the models) -> inference -> rendering/reporting/batch -> cli/gui. ``training`` and ``gui``
are leaves that nothing else imports.
"""

__version__ = "0.1.0"

RESEARCH_NOTICE = (
    "Research software - not a medical device. Not for diagnosis or treatment decisions."
)

__all__ = ["__version__", "RESEARCH_NOTICE"]
