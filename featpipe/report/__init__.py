"""The report: learning curves, the seed lottery, best configurations, ROC/PR curves, Grad-CAM, provenance."""
