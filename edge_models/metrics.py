"""Scores used in manifests, tests and the benchmark (numpy only)."""

from __future__ import annotations

import numpy as np


def f1_binary(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true = np.asarray(y_true, dtype=bool)
    y_pred = np.asarray(y_pred, dtype=bool)
    tp = float(np.sum(y_true & y_pred))
    fp = float(np.sum(~y_true & y_pred))
    fn = float(np.sum(y_true & ~y_pred))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def f1_per_class(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> list[float]:
    return [f1_binary(y_true == k, y_pred == k) for k in range(n_classes)]


def brier(y_true: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((np.asarray(p, dtype=float) - np.asarray(y_true, dtype=float)) ** 2))


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y_true, dtype=float) - np.asarray(y_pred, dtype=float))))


def r4(x: float) -> float:
    return float(round(float(x), 4))
