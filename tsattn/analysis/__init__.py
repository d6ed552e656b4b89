"""Attention-map analysis."""
