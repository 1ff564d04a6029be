"""Scoring detections: VOC AP, COCO mAP, per-class P/R/F1, reports and plots of results, and a
run scored on a split (``evaluate``)."""
