"""model.py of `encoder_tokenize`: raw text (BYTES) -> the encoder's 64 token ids (INT64).

Words (runs of letters, digits and apostrophes, lower-cased) are looked up in vocab.txt (beside
this file, one word per line, the line number is the id); a word the vocabulary lacks goes to a
background id picked by its hash, like the background tokens the encoder was trained on. The
encoder mean-pools its tokens, so a short text is repeated to fill the 64 positions: the pooled
word frequencies stay the text's own.
"""

import re
import zlib
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

SEQ_LEN = 64
FIRST_BACKGROUND_ID = 5


class TritonPythonModel:
    def initialize(self, args):
        words = Path(__file__).with_name("vocab.txt").read_text().splitlines()
        self.ids = {word: index for index, word in enumerate(words)}
        self.background = len(words) - FIRST_BACKGROUND_ID  # ids FIRST_BACKGROUND_ID.. last

    def token_ids(self, text):
        words = re.findall(r"[\w']+", text.decode("utf-8", errors="replace").lower())
        ids = [
            self.ids.get(word, FIRST_BACKGROUND_ID + zlib.crc32(word.encode()) % self.background)
            for word in words
        ] or [FIRST_BACKGROUND_ID]
        return np.resize(np.array(ids, dtype=np.int64), SEQ_LEN)

    def execute(self, requests):
        responses = []
        for request in requests:
            texts = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            tokens = np.stack([self.token_ids(text) for text in texts])
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("TOKENS", tokens)]))
        return responses
