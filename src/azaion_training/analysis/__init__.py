"""Error analysis (docs/error-analysis.md): the predictions cache (predictions.py), each box's
outcome and the confusion matrix (outcomes.py), two models side by side (compare.py).

What the cockpit calls: `predictions.split_predictions` (predict what is missing, then load),
`outcomes.analyse_split` (figures of one model on one split), `compare.compare_analyses`."""
