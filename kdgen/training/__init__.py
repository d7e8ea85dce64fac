"""Training one model: the loop and the named parts around it.

- :mod:`~kdgen.training.loop`: ``train_generation`` (the loop), ``Placement`` (device, precision, compile,
  DDP, frozen teachers, feature taps), ``EpochTally``, the optimizer and schedule, ``freeze_teacher``.
- :mod:`~kdgen.training.objective`: ``GenerationObjective``, today's objective on the method seam
  (hard-label term + student method + tolerance term).
- :mod:`~kdgen.training.batches`, :mod:`~kdgen.training.augment`: device-resident uint8 data, batches,
  crop/flip in batch.
- :mod:`~kdgen.training.resume`: a generation's full training state, saved and restored exactly.
- :mod:`~kdgen.training.runtime`, :mod:`~kdgen.training.parallel`, :mod:`~kdgen.training.sync_batchnorm`,
  :mod:`~kdgen.training.fast`: how it runs (device, precision, processes), never what it computes.
- :mod:`~kdgen.training.metrics`: evaluating a trained model (top-1, NLL, ECE, secondary information).

Nothing here knows about arms, run folders or reports; the losses it minimises come from
:mod:`kdgen.losses`, :mod:`kdgen.methods` and :mod:`kdgen.tolerance`.
"""
