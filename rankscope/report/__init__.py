"""HTML report of a study folder: figures, the paper's findings F1–F7 checked on the runs, tables.

Public API (import the submodules directly; nothing is imported here so ``import rankscope.report`` stays
cheap and never pulls matplotlib into training code):

* ``rankscope.report.render.render_report(study_dir, out=None) -> Path``: write one self-contained HTML file.
* ``rankscope.report.findings.evaluate_findings(diagnostics_df, downstream_df, prediction, runs)``.
* ``rankscope.report.load.load_study(study_dir) -> StudyData``.
* ``rankscope.report.plots.build_figures(data)`` / ``FIGURE_NAMES``.
* ``rankscope.report.browser.check_page`` / ``screenshot``: headless-Chromium checks (tests, docs).
"""
