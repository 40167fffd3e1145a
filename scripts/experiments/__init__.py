"""Drivers that run many trainings and compare them: ``demo`` (the CPU demo; ``fortunes_corpus``
builds its second corpus), ``reproduce`` (the paper's protocol for one preset; ``study`` for a
list of presets, ``launch`` for torchrun/srun/Slurm, ``cells`` for runs at once on one node),
``tune`` (coordinate descent over every hyperparameter: ``coordinate``, ``tune_storage``,
``tune_report``) and ``sweep`` (Hydra multirun's outcome summary). The commands users type are
the thin modules one level up (``python -m scripts.reproduce``)."""
