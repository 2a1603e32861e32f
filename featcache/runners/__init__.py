"""Runners: read the store, call one pure evaluator, write result records.

Each runner is the library twin of a ``bobx`` command (``bobx knn`` ->
:func:`featcache.runners.classification.run_knn`, ...). Evaluators themselves
(``evaluators/``) never see a store; runners are the only glue.
"""
