"""What every run records and how it is computed, shared by the writers (``training``)
and the readers (``comparison``): the MLflow names (:mod:`~av1_ablation.record.contract`),
the metric values (``metrics``), the figures of one run (``figures``), the artifact files
(``artifacts``) and the experiment the runs go to (``experiment``).

Nothing is imported here, so that reading one of them does not load the others.
"""
