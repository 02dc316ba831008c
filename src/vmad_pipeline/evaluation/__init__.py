"""Evaluation as library code: the one image-score rule, answer grading, the metric report, curves
and figures, and MMAD scoring. Pure functions of predictions, masks and parameters; running the
model is ``inference``'s, and the evaluate pipeline's nodes only wire them."""
