"""Accuracy from counts, the one way: overall from a confusion matrix, and per class."""
from __future__ import annotations


def accuracy(correct: int, total: int) -> float:
    """correct / total, 0.0 for an empty set (a class the test set does not hold)."""
    return correct / total if total else 0.0


def correct_and_total(confusion: list[list[int]]) -> tuple[int, int]:
    """The diagonal and the sum of a confusion matrix (rows: the true class)."""
    return sum(confusion[i][i] for i in range(len(confusion))), sum(map(sum, confusion))
