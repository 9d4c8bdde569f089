"""Sensor windows for the walkthrough: 40 readings each, 3 classes (a slow
wave, a fast wave, noise), written in every format the agent reads."""

from pathlib import Path

import numpy as np

rng = np.random.default_rng(0)


def windows(n: int) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 3, size=n)
    t = np.arange(40) / 40.0
    freq = np.where(y == 0, 2.0, 3.0)[:, None]
    wave = np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi, size=(n, 1)))
    wave[y == 2] = 0.0  # class 2: no wave, only noise
    x = wave + rng.normal(0.0, 1.5, size=(n, 40))
    return x.astype(np.float32), y.astype(np.int64)  # features float32, labels integer ids


x, y = windows(2400)
np.savez("sensors.npz", x=x[:2000], y=y[:2000])  # the whole fleet's data, for simulating
np.savez("sensors-heldout.npz", x=x[2000:], y=y[2000:])  # held out: the service evaluates on it

# Device A: one .npz with x of shape (n, 40) float32 and y of shape (n,) integers.
Path("data/device-a").mkdir(parents=True, exist_ok=True)
np.savez("data/device-a/part0.npz", x=x[:300], y=y[:300])

# Device B: a CSV with a header row; the "label" column is y, the others are x.
Path("data/device-b").mkdir(parents=True, exist_ok=True)
header = "label," + ",".join(f"t{i}" for i in range(40))
rows = np.column_stack([y[300:600], x[300:600]])
np.savetxt("data/device-b/part0.csv", rows, delimiter=",", header=header, comments="",
           fmt=["%d"] + ["%.5f"] * 40)
print("wrote sensors.npz, sensors-heldout.npz, data/device-a/part0.npz, data/device-b/part0.csv")
