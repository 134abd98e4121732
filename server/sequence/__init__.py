"""Triton's sequence batcher (`sequence_batching` in config.pbtxt): stateful models, control
inputs and implicit state kept by the scheduler (`scheduler.py`), read from the config by
`policy.py`; live sequences and slots in `slots.py`, batch forming (direct, oldest) in
`strategies.py`, running a batch in `execution.py`, the batch tensors built by `tensors.py`."""

from server.sequence.policy import SequencePolicy, implicit_inputs, implicit_outputs
from server.sequence.scheduler import SequenceBatcher, SequenceCounts

__all__ = [
    "SequenceBatcher",
    "SequenceCounts",
    "SequencePolicy",
    "implicit_inputs",
    "implicit_outputs",
]
