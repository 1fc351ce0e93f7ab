"""Compute the single-label metric with the installed `llm_fusion_fec.evaluation.metrics` (which loads its metric
module from beside its own file) on three predictions.

    ENV/bin/python installed_metric.py

Prints, as JSON, the sorted names of the figures it computes.
"""

import json

import llm_fusion_fec.evaluation.metrics as fusion_metrics

metric = fusion_metrics.load_metric("single_label_classification")
print(json.dumps(sorted(metric.compute(predictions=[0, 1, 1], references=[0, 1, 2]))))
