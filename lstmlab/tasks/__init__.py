"""Tasks: the data and the metric of each experiment. Nothing here knows of the trainer or Hydra."""
