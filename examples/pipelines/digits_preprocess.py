"""model.py of `digits_preprocess`: a raw 8x8 grayscale image (UINT8, 0 = blank, 255 = full ink)
-> the digits CNN's input, FP32 (1, 8, 8) in the dataset's 0..16 range."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            pixels = pb_utils.get_input_tensor_by_name(request, "PIXELS").as_numpy()
            image = (pixels.astype(np.float32) * (16.0 / 255.0)).reshape(-1, 1, 8, 8)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("IMAGE", image)]))
        return responses
