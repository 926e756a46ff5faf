"""Weakly supervised semantic segmentation of H&E histopathology patches."""
