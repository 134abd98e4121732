"""model.py of `breast_cancer_label`: P(malignant), P(benign) -> LABEL ("malignant" when
P(malignant) reaches the config's `threshold` parameter, else "benign") and P(malignant).

A screening service picks a threshold below 0.5 to miss fewer malignant cases; change it in
config.pbtxt (poll mode reloads the step alone).
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"])["parameters"]
        self.threshold = float(parameters["threshold"]["string_value"])

    def execute(self, requests):
        responses = []
        for request in requests:
            probabilities = pb_utils.get_input_tensor_by_name(request, "PROBABILITIES").as_numpy()
            malignant = probabilities[:, :1]
            labels = np.where(malignant >= self.threshold, b"malignant", b"benign").astype(object)
            responses.append(
                pb_utils.InferenceResponse(
                    [
                        pb_utils.Tensor("LABEL", labels),
                        pb_utils.Tensor("P_MALIGNANT", malignant.astype(np.float32)),
                    ]
                )
            )
        return responses
