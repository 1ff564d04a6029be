"""Datasets: the validated sample index, one module per annotation format, splits, the tf.data
pipeline with its augmentation, and the generated demo dataset."""
