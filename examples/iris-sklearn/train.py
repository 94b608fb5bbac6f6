"""Fit the iris classifier and save it as model/model.joblib (deterministic).

The iris data ships inside scikit-learn, so training needs no download. The committed
model/model.joblib was made by this script; to regenerate it, in a throwaway virtualenv:

    python -m venv /tmp/iris-venv
    /tmp/iris-venv/bin/pip install --require-hashes -r requirements.lock
    /tmp/iris-venv/bin/python train.py

Use the locked versions: the pickle is tied to the scikit-learn version in requirements.lock.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

SEED = 0


def train() -> tuple[Pipeline, float]:
    """A scaler + logistic regression that predicts the species name; and its test accuracy."""
    iris = load_iris()
    labels = np.asarray(iris.target_names)[iris.target]  # predict names, not class numbers
    x_train, x_test, y_train, y_test = train_test_split(
        iris.data, labels, test_size=0.2, random_state=SEED, stratify=labels
    )
    model = Pipeline(
        [
            ("scale", StandardScaler()),
            ("classify", LogisticRegression(max_iter=1000, random_state=SEED)),
        ]
    )
    model.fit(x_train, y_train)
    return model, float(model.score(x_test, y_test))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "model" / "model.joblib"
    )
    args = parser.parse_args()
    model, accuracy = train()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, args.out)
    print(f"saved {args.out} (test accuracy {accuracy:.3f})")


if __name__ == "__main__":
    main()
