"""model.py of a classifier's last step: probabilities -> LABEL (the most likely class's name)
and PROBABILITY (its probability).

The class names come from the config's `labels` parameter (comma-separated, in class order).
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        labels = config["parameters"]["labels"]["string_value"].split(",")
        self.labels = np.array([label.encode() for label in labels], dtype=np.object_)

    def execute(self, requests):
        responses = []
        for request in requests:
            probabilities = pb_utils.get_input_tensor_by_name(request, "PROBABILITIES").as_numpy()
            best = probabilities.argmax(axis=1)
            responses.append(
                pb_utils.InferenceResponse(
                    [
                        pb_utils.Tensor("LABEL", self.labels[best].reshape(-1, 1)),
                        pb_utils.Tensor("PROBABILITY", probabilities.max(axis=1, keepdims=True)),
                    ]
                )
            )
        return responses
