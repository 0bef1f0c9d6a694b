"""Training and recording the runs: configurations, data on the device, the epoch loop,
Stage 1, Stage 2 (the loss arms), the reference models, the ablation, the run lifecycle
and the thread budget.

Each command module (``stage1``, ``stage2``, ``reference``, ``ablation``) defines
``configure(parser)`` and ``run(args)``. Nothing is imported here: ``cli`` loads only the
chosen command's module.
"""
