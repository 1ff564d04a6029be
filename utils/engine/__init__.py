"""Training: the Trainer, the run folder (RunDir), callbacks, checkpoints, EMA, the LR schedule
and tf.distribute strategies."""
