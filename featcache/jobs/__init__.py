"""The job layer: heavy jobs (fine-tuning, detection, robustness) as resumable, leased runs.

A job is a recipe + backbone + dataset + seed. Its pieces, one module each:

* :mod:`featcache.jobs.recipes`: hyperparameters as YAML (``manifests/recipes/*.yaml``),
  validated against a schema per job kind, resolved per job into grid points
  (``get_recipe("bob").resolve(context, overrides)``).
* :mod:`featcache.jobs.driver`: :class:`JobSpec` (identity -> run id, record params),
  the :class:`Trainer` protocol a training loop implements, :func:`run_job` (one run:
  cached if finished, leased, resumed from its newest checkpoint, curve artifact,
  final weights, ``done.json``, records) and :func:`run_sweep` (a grid, selection on
  validation, the selected point's records).
* :mod:`featcache.jobs.state`: where a run lives in the store (``jobs/<run_id>/``:
  checkpoints read with ``torch.load(weights_only=True)``, ``model.safetensors``).
* :mod:`featcache.leases`: the lease every run takes (``lease_key("job", run_id)``).

A new job kind (detection) needs: its recipe fields in ``recipes.SCHEMAS`` and its
recipes in YAML; a Trainer (its loop in ``featcache/<kind>/``, no store inside); and a
runner in ``featcache/runners/`` that builds one :class:`JobSpec` per grid point with
:func:`make_job` (identity: everything that changes the result, e.g. ``plan.identity()``,
the dataset's identity and id digests, the point, the seed, library versions), then calls
:func:`run_sweep` with a trainer factory, the validation metric to select on and a
``records(job, metrics)`` function. ``featcache/runners/finetune.py`` is the worked example.
"""

from featcache.jobs.driver import (
    EpochEnd,
    JobOutcome,
    JobSpec,
    Step,
    SweepOutcome,
    Trainer,
    list_sweeps,
    make_job,
    put_curve,
    run_job,
    run_sweep,
    select_point,
)
from featcache.jobs.recipes import Recipe, get_recipe, list_recipes
from featcache.jobs.state import JobState

__all__ = [
    "EpochEnd",
    "JobOutcome",
    "JobSpec",
    "JobState",
    "Recipe",
    "Step",
    "SweepOutcome",
    "Trainer",
    "get_recipe",
    "list_recipes",
    "list_sweeps",
    "make_job",
    "put_curve",
    "run_job",
    "run_sweep",
    "select_point",
]
