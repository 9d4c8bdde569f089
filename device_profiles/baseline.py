"""``fedge simulate FLEET --baseline``: the same model trained centrally on the
fleet's own dataset, so a user can see what federation costs on their data.

Two central runs, from the same exported model and initial weights, on the
union of every device's training examples (shuffled each epoch), with the
clients' batch size and learning rate, evaluated on the same held-out split:

- **same sequential steps**: as many train steps as the federated run's
  longest chain of steps — server steps (versions published) × local steps
  per accepted update (its examples ÷ batch size, averaged). Federated
  training cannot take more sequential steps than that; this baseline shows
  what the same depth of SGD reaches on pooled data.
- **same examples**: as many examples as the accepted updates trained on in
  total (what ``fedge demo`` compares with): the same work, done centrally.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from device_profiles.sim.report import RunResult
from device_profiles.sim.runner import Prepared
from device_profiles.sim.tflite import CentralBaseline, central_baseline


@dataclass(frozen=True)
class Baselines:
    mode: str
    federated_accuracy: float | None
    server_steps: int
    local_steps: float  # mean train steps per accepted update
    same_steps: CentralBaseline
    same_examples: CentralBaseline

    def lines(self) -> list[str]:
        fed = ("not evaluated" if self.federated_accuracy is None
               else f"{self.federated_accuracy:.3f}")
        s, e = self.same_steps, self.same_examples
        return [
            f"- {self.mode}: federated final accuracy {fed}",
            f"  - central, same sequential steps: {s.accuracy:.3f} ({s.steps} steps = "
            f"{self.server_steps} server steps × {self.local_steps:.1f} local steps per update; "
            f"batch {s.batch_size}, lr {s.learning_rate:g})",
            f"  - central, same examples: {e.accuracy:.3f} ({e.examples} examples = those the "
            f"accepted updates trained on, {e.steps} steps)",
        ]


def baselines(prep: Prepared, result: RunResult) -> Baselines:
    rec = result.recorder
    accepted = [u for u in rec.uploads if u.status == 202]
    batch = int(prep.client["batch_size"])
    lr = float(prep.client["learning_rate"])
    local = float(np.mean([math.ceil(u.examples / batch) for u in accepted])) if accepted else 0.0
    first = rec.versions[0].version if rec.versions else 0
    server_steps = max(0, rec.latest_version - first)
    union = np.concatenate(prep.parts) if prep.parts else np.array([], np.int64)
    x, y = prep.dataset.x_train[union], prep.dataset.y_train[union]

    def central(**budget: int) -> CentralBaseline:
        return central_baseline(prep.model_dir, x, y, prep.dataset.x_test, prep.dataset.y_test,
                                batch_size=batch, learning_rate=lr, seed=prep.fleet.seed,
                                **budget)

    steps = central(steps=max(1, round(server_steps * local)))
    examples = central(examples=max(1, sum(u.examples for u in accepted)))
    return Baselines(result.mode, rec.latest_accuracy, server_steps, local, steps, examples)


def baseline_section(prep: Prepared, results: tuple[RunResult, ...]) -> list[str]:
    lines = ["", "## Central baselines", "",
             "The same model and initial weights trained centrally on the union of the "
             "devices' data (see docs/simulation.md, `--baseline`):", ""]
    for result in results:
        lines += baselines(prep, result).lines()
    return lines
