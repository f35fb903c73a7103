"""Evaluation: inference (slice-wise 2D, sliding window 2D/3D), metrics (Dice, Jaccard, HD95,
ASD in mm or voxels, both HD95 definitions), reports (tables, plots) and the comparison of runs.
"""
