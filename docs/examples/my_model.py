"""A small Keras model of one's own: 40 readings of one sensor → 3 classes."""

import keras


def build() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input(shape=(40, 1)),  # 40 time steps, 1 channel
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),  # classes 0, 1, 2
        ]
    )
