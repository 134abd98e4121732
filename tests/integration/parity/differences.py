"""ferry's deliberate differences from tritonserver on the corpus: which rows, what each server
answers, and why. README's "Differences from Triton" section is the user-facing form of this list.
A row listed here must still answer exactly these statuses (a change on either side fails).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Difference:
    triton: int | str  # HTTP status or gRPC code name
    ferry: int | str
    reason: str


CLIENT_ERROR = (
    "a body that does not parse, or a field of the wrong JSON type, is the client's error: "
    "ferry answers 400; Triton answers 500 (its JSON reader's errors are INTERNAL)"
)
MALFORMED_FIELD = (
    "a malformed field is refused rather than ignored: Triton ignores a non-object "
    "`parameters` on an input or output, a non-object repository index body and an unparsable "
    "unload body"
)
NO_WRAPAROUND = (
    "an integer out of its datatype's range is refused; Triton wraps it silently (300 as INT8 "
    "becomes 44)"
)
NO_FOLDER = (
    "loading a name with no folder in the repository is 404 / NOT_FOUND; Triton answers "
    "500 / INTERNAL ('failed to poll from model repository')"
)
UNSAFE_NAME = (
    "a model name that is not one plain folder name (empty, a path separator, '..', hidden) is "
    "refused with 400 / INVALID_ARGUMENT before the file system is touched; Triton tries to "
    "load it and answers 500 / INTERNAL"
)
FILES_NEED_CONFIG = (
    "`file:` load parameters without `config` are refused at once (400); Triton first polls "
    "the repository for the model and answers 500"
)
SHM_CLIENT_ERROR = (
    "a shared memory registration that cannot be mapped (no such object, empty name or key, "
    "zero size, past the object's end) or an output region too small for the result is the "
    "client's error: 400 / INVALID_ARGUMENT; Triton answers 500 / INTERNAL"
)
PLAIN_LOAD_READS_CONFIG = (
    "a load without a config after a load with a config override goes back to config.pbtxt; "
    "Triton keeps serving the override until the model's files change"
)
NO_CUDA_SHM = (
    "ferry has no CUDA shared memory and answers a registration as a Triton built without GPU "
    "support does (400, 'GPUs not supported') without reading the body; the GPU build of "
    "Triton parses the body first (500 on invalid JSON)"
)
FERRY_EXTENSION = "ferry's own route (online drift detail); Triton has none"
STRICT_GRPC = (
    "ferry refuses data that goes to no input (more raw_input_contents than inputs) and a "
    "negative timeout; Triton ignores the extra entries and accepts the timeout"
)

FAILED_VALIDATION = (
    "a request refused by validation (shape, datatype, unknown output, batch size) counts as a "
    'failure in the model\'s statistics and in nv_inference_request_failure{reason="OTHER"}; '
    "Triton 2.51 counts it nowhere"
)
SHM_OUTPUT_PARAMETERS = (
    "an output written to shared memory carries its region and byte size in the response's "
    "output parameters; Triton sends the output without parameters"
)
UNLOAD_IS_SYNCHRONOUS = (
    "an unload answers once the model is unloaded (its requests finished); Triton answers "
    "at once and unloads in the background (its index says UNLOADING meanwhile)"
)

NEWER_TRITON = (
    "as newer Triton releases (the QA tests of qa/L0_http and qa/L0_grpc): a duplicate "
    "requested output is refused ('already exists in request'); 2.51 sends it once"
)

REQUIRED_INPUTS = (
    "a request without a required input is refused even when an optional input makes the "
    "count right, as newer Triton releases do (qa/L0_input_validation); 2.51 only counts the "
    "inputs and hands the request to the model, which fails (500)"
)


def _rows(status: tuple[int | str, int | str], reason: str, *ids: str) -> dict[str, Difference]:
    return {case_id: Difference(status[0], status[1], reason) for case_id in ids}


HTTP_DIFFERENCES: dict[str, Difference] = {
    **_rows(
        (500, 400),
        CLIENT_ERROR,
        "infer JSON numeric id",
        "whitespace body",
        "truncated JSON",
        "garbage bytes",
        "JSON null",
        "JSON array",
        "JSON number",
        "JSON string",
        "trailing comma",
        "single quotes",
        "trailing garbage",
        "two JSON objects",
        "no inputs key",
        "inputs is null",
        "inputs is an object",
        "inputs is a string",
        "input without name",
        "input name is a number",
        "input without shape",
        "input shape is a number",
        "input shape is a string",
        "input shape is null",
        "input shape negative",
        "input shape float",
        "input shape string dims",
        "input shape bool dims",
        "input shape over int64",
        "input without datatype",
        "datatype is a number",
        "datatype mismatch BYTES",
        "data is null",
        "data is a number",
        "data is a string",
        "data is an object",
        "data has strings",
        "data has numeric strings",
        "data has null",
        "data has bools for FP32",
        "data has objects",
        "too few elements",
        "too many elements",
        "ragged nested data",
        "data empty",
        "INT8 float value",
        "INT64 float value",
        "INT64 overflow",
        "BOOL as numbers",
        "BOOL as strings",
        "BYTES numbers",
        "BYTES null element",
        "BYTES object element",
        "outputs is an object",
        "outputs is a string",
        "output is a string",
        "output without name",
        "output name is a number",
        "binary_data is a string",
        "binary_data is a number",
        "classification is a string",
        "classification is a float",
        "classification is negative",
        "classification is a bool",
        "parameters is a list",
        "parameters is a string",
        "priority is a string",
        "priority is negative",
        "priority is a float",
        "timeout is a string",
        "timeout is negative",
        "binary_data_output is a string",
        "sequence_id is a list",
        "sequence_start is a string",
        "id is an object",
        "header length float",
        "header length cuts the JSON",
        "binary size negative",
        "binary size a string",
        "binary size a float",
        "repository index invalid JSON",
        "repository index ready is a string",
        "repository index ready is a number",
        "load invalid JSON",
        "load parameters is a list",
        "load config is a number",
        "system shm register no body",
        "system shm register invalid JSON",
        "system shm register key is a number",
        "system shm register byte_size is a string",
        "system shm register negative offset",
    ),
    **_rows(
        (200, 400),
        MALFORMED_FIELD,
        "input parameters not an object",
        "output parameters not an object",
        "repository index JSON array",
        "unload invalid JSON",
    ),
    **_rows((500, 400), MALFORMED_FIELD, "load body is an array"),
    **_rows((200, 400), NO_WRAPAROUND, "INT8 overflow"),
    **_rows((200, 400), NEWER_TRITON, "duplicate output"),
    **_rows((500, 400), REQUIRED_INPUTS, "only the optional input"),
    **_rows((500, 404), NO_FOLDER, "load unknown model", "load config invalid JSON"),
    **_rows((500, 400), UNSAFE_NAME, "load encoded dot-dot name", "load encoded slash name"),
    **_rows((500, 400), FILES_NEED_CONFIG, "load file without config"),
    **_rows((500, 400), SHM_CLIENT_ERROR, "system shm register missing object"),
    **_rows((500, 400), NO_CUDA_SHM, "cuda shm register invalid JSON"),
    **_rows((404, 200), FERRY_EXTENSION, "drift of an unmonitored model"),
}

GRPC_DIFFERENCES: dict[str, Difference] = {
    **_rows(("OK", "INVALID_ARGUMENT"), STRICT_GRPC, "more raw entries than inputs"),
    **_rows(("OK", "INVALID_ARGUMENT"), STRICT_GRPC, "timeout negative"),
    **_rows(("OK", "INVALID_ARGUMENT"), NO_WRAPAROUND, "typed INT8 out of range"),
    **_rows(("OK", "INVALID_ARGUMENT"), NEWER_TRITON, "duplicate output"),
    **_rows(("INTERNAL", "INVALID_ARGUMENT"), REQUIRED_INPUTS, "only the optional input"),
    **_rows(("INTERNAL", "NOT_FOUND"), NO_FOLDER, "load unknown model", "load config invalid JSON"),
    **_rows(("INTERNAL", "INVALID_ARGUMENT"), UNSAFE_NAME, "load empty name", "load slash name"),
    **_rows(("INTERNAL", "INVALID_ARGUMENT"), FILES_NEED_CONFIG, "load file without config"),
    **_rows(
        ("INTERNAL", "INVALID_ARGUMENT"),
        SHM_CLIENT_ERROR,
        "system shm register missing object",
        "system shm register empty name",
        "system shm register empty key",
        "system shm register zero size",
    ),
}
