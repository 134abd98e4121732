"""model.py of `digits_postprocess`: the CNN's 10 probabilities -> DIGIT (INT32) and its
PROBABILITY."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            probabilities = pb_utils.get_input_tensor_by_name(request, "PROBABILITIES").as_numpy()
            responses.append(
                pb_utils.InferenceResponse(
                    [
                        pb_utils.Tensor(
                            "DIGIT", probabilities.argmax(axis=1).astype(np.int32).reshape(-1, 1)
                        ),
                        pb_utils.Tensor("PROBABILITY", probabilities.max(axis=1, keepdims=True)),
                    ]
                )
            )
        return responses
